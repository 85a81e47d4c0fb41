"""What the agent watches on the device: the battery, the network, its own compute."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

__all__ = ["BatteryMonitor", "BatteryReading", "NetworkEstimator"]


@dataclass(frozen=True, slots=True)
class BatteryReading:
    percent: float
    charging: bool


class BatteryMonitor:
    """The real battery through psutil (a machine without one reports mains power), or an emulated one.

    The emulated battery starts at ``start_percent`` of ``capacity_wh`` and drains by the energy the agent
    reports for each request; tests and demos can also set its level directly.
    """

    def __init__(self, *, emulated: bool = False, capacity_wh: float = 10.0, start_percent: float = 100.0,
                 charging: bool = False) -> None:  # fmt: skip
        self.emulated = emulated
        self.capacity_wh = capacity_wh
        self._percent = start_percent
        self._charging = charging
        self._lock = threading.Lock()

    def read(self) -> BatteryReading:
        if self.emulated:
            with self._lock:
                return BatteryReading(self._percent, self._charging)
        battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
        if battery is None:
            return BatteryReading(100.0, True)  # mains power
        return BatteryReading(float(battery.percent), bool(battery.power_plugged))

    def drain(self, joules: float) -> None:
        if not self.emulated or self._charging:
            return
        with self._lock:
            self._percent = max(0.0, self._percent - joules / (self.capacity_wh * 3600) * 100)

    def set(self, percent: float | None = None, charging: bool | None = None) -> None:
        with self._lock:
            if percent is not None:
                self._percent = percent
            if charging is not None:
                self._charging = charging


class NetworkEstimator:
    """Uplink bandwidth and RTT from real transfers (EWMA), optionally overridden by an emulated link."""

    def __init__(self, initial_uplink_mbps: float = 10.0, initial_rtt_ms: float = 20.0, alpha: float = 0.3) -> None:
        self._uplink = initial_uplink_mbps
        self._rtt = initial_rtt_ms
        self._alpha = alpha
        self._lock = threading.Lock()
        self.emulated_uplink_mbps: float | None = None

    @property
    def uplink_mbps(self) -> float:
        with self._lock:
            return self.emulated_uplink_mbps if self.emulated_uplink_mbps is not None else self._uplink

    @property
    def rtt_ms(self) -> float:
        with self._lock:
            return self._rtt

    #: An observation this many times above or below the estimate is a step (the device changed networks),
    #: not noise: the estimate jumps to it instead of averaging, so the next plan already follows.
    STEP_FACTOR = 2.0

    def observe_transfer(self, nbytes: int, seconds: float) -> None:
        """A request sent ``nbytes`` and its network share took ``seconds``."""
        if nbytes < 16_384 or seconds <= 0:
            return  # too small to say anything about bandwidth
        observed = nbytes * 8 / seconds / 1e6
        with self._lock:
            ratio = observed / self._uplink if self._uplink > 0 else float("inf")
            if ratio > self.STEP_FACTOR or ratio < 1 / self.STEP_FACTOR:
                self._uplink = observed
            else:
                self._uplink = (1 - self._alpha) * self._uplink + self._alpha * observed

    def observe_rtt(self, seconds: float) -> None:
        with self._lock:
            self._rtt = (1 - self._alpha) * self._rtt + self._alpha * seconds * 1e3
