"""Live device activity: requests per device class over a sliding window, with the classes' typical profile.

The front-end records one sample per planned request (its device class and the device's reported compute
and uplink); the division controller reads the rates to decide which classes the division should serve.
Pure and thread-safe; time comes from an injectable clock so that windows are tested without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["ActivityWindow", "ClassActivity", "share_shift"]

#: Bound on distinct device classes tracked at once (a device names its own class: it must not grow memory
#: without limit); samples of further classes are counted under OTHER_CLASS.
MAX_CLASSES = 64
OTHER_CLASS = "other"
MAX_CLASS_NAME_CHARS = 64


@dataclass(frozen=True, slots=True)
class ClassActivity:
    """One device class's recent traffic and its typical device (medians of what its devices reported)."""

    device_class: str
    requests_per_s: float
    requests: int
    compute_flops: float
    uplink_mbps: float
    memory_bytes: int

    def __str__(self) -> str:
        return (
            f"{self.device_class}: {self.requests_per_s:.2f} req/s ({self.requests} in window), "
            f"{self.compute_flops / 1e9:.2f} GFLOP/s, {self.uplink_mbps:.1f} Mbit/s"
        )


@dataclass(frozen=True, slots=True)
class _Sample:
    at_s: float
    compute_flops: float
    uplink_mbps: float
    memory_bytes: int


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class ActivityWindow:
    """Requests per device class in the last ``window_s`` seconds."""

    def __init__(
        self,
        window_s: float = 60.0,
        *,
        max_samples_per_class: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_s > 0 or not math.isfinite(window_s):
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
        if max_samples_per_class < 1:
            raise ValueError(f"max_samples_per_class must be at least 1, got {max_samples_per_class}")
        self.window_s = window_s
        self._max_samples = max_samples_per_class
        self._clock = clock
        self._started_s = clock()
        self._samples: dict[str, deque[_Sample]] = {}
        self._lock = threading.Lock()

    def record(self, device_class: str, compute_flops: float, uplink_mbps: float, memory_bytes: int = 0) -> None:
        """One request from a device of ``device_class`` (empty: "unknown") that reported these figures."""
        name = (device_class or "unknown")[:MAX_CLASS_NAME_CHARS]
        flops = compute_flops if math.isfinite(compute_flops) and compute_flops > 0 else 0.0
        uplink = uplink_mbps if math.isfinite(uplink_mbps) and uplink_mbps > 0 else 0.0
        sample = _Sample(self._clock(), flops, uplink, max(0, int(memory_bytes)))
        with self._lock:
            if name not in self._samples and len(self._samples) >= MAX_CLASSES:
                name = OTHER_CLASS
            queue = self._samples.setdefault(name, deque(maxlen=self._max_samples))
            queue.append(sample)

    def _expire(self, now_s: float) -> None:
        horizon = now_s - self.window_s
        for name in list(self._samples):
            queue = self._samples[name]
            while queue and queue[0].at_s < horizon:
                queue.popleft()
            if not queue:
                del self._samples[name]

    def snapshot(self) -> dict[str, ClassActivity]:
        """Each active class's rate (requests in the window over the window, or over the time since start
        while the window has not filled yet) and its devices' median profile."""
        now = self._clock()
        span = max(min(self.window_s, now - self._started_s), 1e-9)
        with self._lock:
            self._expire(now)
            samples = {name: list(queue) for name, queue in self._samples.items()}
        return {
            name: ClassActivity(
                device_class=name,
                requests_per_s=len(items) / span,
                requests=len(items),
                compute_flops=_median([s.compute_flops for s in items]),
                uplink_mbps=_median([s.uplink_mbps for s in items]),
                memory_bytes=int(_median([float(s.memory_bytes) for s in items])),
            )
            for name, items in sorted(samples.items())
        }


def share_shift(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """How far a request mix moved: the total-variation distance between two mixes' class shares, in [0, 1]
    (0: the same shares; 1: disjoint classes). Empty mixes count as no traffic: a move to or from nothing
    is 1 only when the other side has traffic."""
    total_before, total_after = sum(before.values()), sum(after.values())
    if total_before <= 0 and total_after <= 0:
        return 0.0
    if total_before <= 0 or total_after <= 0:
        return 1.0
    classes = set(before) | set(after)
    return 0.5 * sum(abs(before.get(c, 0.0) / total_before - after.get(c, 0.0) / total_after) for c in classes)
