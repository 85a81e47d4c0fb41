"""Online calibration: observed compute times and transfer rates correct the cost model's inputs.

Each estimate is an exponentially weighted moving average of observed/predicted ratios (compute per server
and per device) or of observed rates (uplink per device). ``version`` changes whenever an estimate moves by
more than ``significant`` (10%) since the last change, so plan caches keyed on it re-plan only when
predictions would really differ.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from splitinfer.planner.problem import DeviceProfile, ServerProfile

__all__ = ["Calibration"]


@dataclass
class _Estimate:
    value: float
    published: float


@dataclass
class Calibration:
    alpha: float = 0.3
    significant: float = 0.1
    version: int = 0
    _server_ratio: dict[str, _Estimate] = field(default_factory=dict)
    _device_ratio: dict[str, _Estimate] = field(default_factory=dict)
    _uplink_mbps: dict[str, _Estimate] = field(default_factory=dict)
    _device_partition_ratio: dict[str, dict[str, _Estimate]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _update(self, table: dict[str, _Estimate], key: str, sample: float) -> None:
        with self._lock:
            estimate = table.get(key)
            if estimate is None:
                table[key] = _Estimate(sample, sample)
                self.version += 1
                return
            estimate.value = (1 - self.alpha) * estimate.value + self.alpha * sample
            if abs(estimate.value - estimate.published) > self.significant * estimate.published:
                estimate.published = estimate.value
                self.version += 1

    def observe_server(self, address: str, observed_ms: float, predicted_ms: float) -> None:
        """A partition ran on ``address`` in ``observed_ms`` where the model predicted ``predicted_ms``."""
        if observed_ms > 0 and predicted_ms > 0:
            self._update(self._server_ratio, address, observed_ms / predicted_ms)

    def observe_device(self, device_id: str, observed_ms: float, predicted_ms: float) -> None:
        if observed_ms > 0 and predicted_ms > 0:
            self._update(self._device_ratio, device_id, observed_ms / predicted_ms)

    def observe_device_partition(self, device_id: str, partition: str, observed_ms: float, predicted_ms: float) -> None:
        """One partition ("model@variant/partition") ran on the device in ``observed_ms`` where the FLOP-based
        model, with the device's overall calibration applied, predicted ``predicted_ms``."""
        if observed_ms > 0 and predicted_ms > 0:
            with self._lock:
                table = self._device_partition_ratio.setdefault(device_id, {})
            self._update(table, partition, observed_ms / predicted_ms)

    def observe_uplink(self, device_id: str, nbytes: int, seconds: float) -> None:
        """A transfer of ``nbytes`` from the device took ``seconds`` (payload time, RTT excluded)."""
        if nbytes > 0 and seconds > 0:
            self._update(self._uplink_mbps, device_id, nbytes * 8 / seconds / 1e6)

    def server(self, profile: ServerProfile) -> ServerProfile:
        with self._lock:
            estimate = self._server_ratio.get(profile.address)
            return profile if estimate is None else replace(profile, flops=profile.flops / estimate.published)

    def device(self, device_id: str, profile: DeviceProfile) -> DeviceProfile:
        with self._lock:
            ratio = self._device_ratio.get(device_id)
            uplink = self._uplink_mbps.get(device_id)
            partitions = tuple(
                sorted((k, e.published) for k, e in self._device_partition_ratio.get(device_id, {}).items())
            )
        if partitions:
            profile = replace(profile, partition_factors=partitions)
        if ratio is not None:
            profile = replace(profile, flops=profile.flops / ratio.published)
        if uplink is not None:
            profile = replace(profile, uplink_mbps=uplink.published)
        return profile
