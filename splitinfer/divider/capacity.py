"""What partitions are sized to: server capacities and device classes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from splitinfer.errors import InvalidArgument

__all__ = ["DeviceClass", "ServerCapacity", "load_capacities"]


@dataclass(frozen=True, slots=True)
class ServerCapacity:
    """A server that will host one partition of a division."""

    name: str
    #: Effective compute, floating-point operations per second.
    flops: float
    #: Memory available for partitions, bytes.
    memory_bytes: int

    def __post_init__(self) -> None:
        if self.flops <= 0 or self.memory_bytes <= 0:
            raise InvalidArgument(f"server {self.name!r}: flops and memory_bytes must be positive")


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """A class of devices (phone, Jetson, Pi) and how much traffic it sends now."""

    name: str
    flops: float
    memory_bytes: int
    #: Uplink bandwidth typical of the class, megabits per second.
    uplink_mbps: float
    #: Recent requests per second from devices of this class; 0 when none are active.
    request_rate: float = 0.0


def load_capacities(path: Path) -> tuple[list[ServerCapacity], list[DeviceClass]]:
    """Reads ``{"servers": [{name, flops, memory_bytes}], "devices": [{name, flops, ...}]}``."""
    try:
        data = json.loads(path.read_text())
        servers = [ServerCapacity(**s) for s in data.get("servers", [])]
        devices = [DeviceClass(**d) for d in data.get("devices", [])]
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{path}: not a valid capacity file: {exc}") from None
    return servers, devices
