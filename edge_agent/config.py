"""Edge agent configuration: one frozen dataclass, units in names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitinfer.config import load_config

__all__ = ["AgentConfig"]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    #: Stable id of this device.
    device_id: str = "device"
    #: Device class (phone, jetson, pi, ...).
    device_class: str = "phone"
    #: Front-end address.
    frontend: str = "127.0.0.1:50051"
    #: Model Pool address (for the partitions the device runs).
    pool: str = "127.0.0.1:50052"
    #: Where pulled partitions are cached.
    cache_dir: str = ""
    #: Emulated compute slowdown: the device reports and behaves as this many times slower (>= 1).
    compute_slowdown: float = 1.0
    #: Power drawn while computing / transmitting, watts (used for planning and the emulated battery).
    compute_power_w: float = 3.0
    transmit_power_w: float = 1.5
    #: Emulated battery (tests, demos): capacity, start level, charging.
    emulated_battery: bool = False
    battery_capacity_wh: float = 10.0
    battery_start_percent: float = 100.0
    charging: bool = False
    #: Emulated uplink in Mbps (0: measure the real one).
    emulated_uplink_mbps: float = 0.0
    #: Seconds a plan is reused while conditions stay in the same buckets (registry changes reach it then).
    plan_ttl_s: float = 10.0
    #: Seconds allowed for the servers' part of a request.
    request_timeout_s: float = 30.0
    #: After the first plan for a model, pull all partitions of its variant so that the device can fall back
    #: to running the model alone when the servers are unreachable.
    prefetch_fallback: bool = True
    #: Seconds the agent waits for the front-end before falling back to device-only.
    connect_timeout_s: float = 2.0
    #: CA certificate (PEM file) to verify the front-end and pool with; empty: plaintext.
    tls_ca_file: str = ""
    #: File holding this device's bearer token (sent on every call when TLS is on).
    token_file: str = ""

    @classmethod
    def from_file(cls, path: Path) -> AgentConfig:
        """Reads a JSON object whose keys are field names; unknown keys are an error."""
        return load_config(cls, path)
