"""Bandwidth traces on the standard uplink profiles used by Neurosurgeon and DADS."""

from __future__ import annotations

import math
import random

__all__ = ["STANDARD_UPLINKS_MBPS", "bandwidth_trace", "stepped_trace"]

#: Average uplink bandwidth of the standard profiles, megabits per second.
STANDARD_UPLINKS_MBPS: dict[str, float] = {"CAT1": 0.13, "3G": 1.1, "4G": 5.85, "Wi-Fi": 18.88}


def bandwidth_trace(
    mean_mbps: float, length: int, seed: int, variability: float = 0.35, memory: float = 0.9
) -> list[float]:
    """A trace whose log follows an AR(1) process around log(mean): bursts and fades that persist for a few
    samples, with the given mean (the log-normal bias is removed) and coefficient of variation about
    ``variability``."""
    rng = random.Random(seed)
    sigma = math.sqrt(math.log(1 + variability**2))
    innovation = sigma * math.sqrt(1 - memory**2)
    level = rng.gauss(0, sigma)
    trace = []
    for _ in range(length):
        level = memory * level + rng.gauss(0, innovation)
        trace.append(mean_mbps * math.exp(level - sigma**2 / 2))
    return trace


def stepped_trace(profiles: list[str], per_step: int, seed: int, variability: float = 0.2) -> list[float]:
    """Steps through named profiles, ``per_step`` samples each."""
    trace: list[float] = []
    for k, name in enumerate(profiles):
        trace += bandwidth_trace(STANDARD_UPLINKS_MBPS[name], per_step, seed + k, variability)
    return trace
