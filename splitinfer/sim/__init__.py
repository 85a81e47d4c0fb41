"""Scenario simulator: device populations, bandwidth traces, battery drain and server load, to evaluate
planners (and, later, to train learning-based ones)."""

from splitinfer.sim.simulator import DeviceClassSpec, Metrics, Scenario, simulate
from splitinfer.sim.traces import STANDARD_UPLINKS_MBPS, bandwidth_trace, stepped_trace

__all__ = [
    "STANDARD_UPLINKS_MBPS",
    "DeviceClassSpec",
    "Metrics",
    "Scenario",
    "bandwidth_trace",
    "simulate",
    "stepped_trace",
]
