"""Online calibration: measured step times correct the cost model's compute predictions, per place.

The entry point is :meth:`Calibration.observe_request`: after a request ran, the owner of its plan passes the
plan and the measured compute time of every partition (device steps and server steps alike). Each step is
compared with the plan's *base* prediction (``Placement.base_ms``: FLOPs over the place's reported FLOP/s,
no calibration applied), never with the calibrated prediction, so that estimates converge to the true
ratio instead of its square root.

Per place (a device id, or a server address) the calibration learns two things:

- **per partition**, the factor measured / base (``partition_factors``): the cost model charges exactly
  base x factor for a partition it has measured there;
- **a place model** for partitions never measured there (a model the place has not run): measured ≈
  ``compute_ratio`` x base + ``fixed_ms``, a line fitted by exponentially weighted least squares over the
  place's recent (base, measured) pairs. ``fixed_ms`` is the per-partition fixed cost (dispatch,
  framework overhead, small ops) that FLOPs cannot see; it is what makes a tiny model on a slow device
  cost milliseconds rather than microseconds.

Given the request's measured end-to-end latency, it also learns the per-request overhead no partition shows
(dispatch, RPCs, framework work): measured total less measured compute less predicted transfers, per device,
for plans that use servers and for device-only plans (``offload_overhead_ms`` / ``local_overhead_ms``), per
model (the overhead grows with a model's tensors and partitions) and per device over all its models (what a
model the device has not run yet is charged).

Inputs are bounded and outlier-filtered: non-finite, non-positive or absurd times (> ``MAX_STEP_MS``) are
dropped; a sample more than ``OUTLIER_FACTOR`` away from an established estimate is held back and only
accepted when the next one agrees with it (a real change of conditions, not one slow run); while an
estimate is young (< 3 samples), a much *faster* sample replaces it at once (the first run of a partition
pays warm-up costs that later runs do not).

``version`` changes whenever a published estimate moves by more than ``significant`` (10%), so plan caches
keyed on it re-plan only when predictions would really differ.

The older per-method API (``observe_server``, ``observe_device``, ``observe_device_partition``) still
works; its samples are ratios the caller computed and feed the same tables.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from splitinfer.planner.cost import BASE_FLOOR_S
from splitinfer.planner.plan import ON_DEVICE, Plan
from splitinfer.planner.problem import DeviceProfile, ServerProfile

__all__ = ["Calibration", "MeasuredStep"]

#: A step time above this is not a measurement of compute (a hung node, a clock jump): dropped.
MAX_STEP_MS = 600_000.0
#: Ratios measured / base outside this range are dropped as nonsense (bad FLOP counts or clocks).
RATIO_RANGE = (1e-4, 1e7)
#: A sample this many times away from an established estimate is an outlier until the next one agrees.
OUTLIER_FACTOR = 3.0
#: Samples an estimate needs before it counts as established.
ESTABLISHED = 3
#: Additive estimates (per-request overhead) treat deviations below this many ms as noise, not outliers.
OFFSET_FLOOR_MS = 2.0
#: A place model's ratio is at least this (a place can be faster than it reports, but not without limit).
MIN_PLACE_RATIO = 1e-3


@dataclass(frozen=True, slots=True)
class MeasuredStep:
    """One partition's measured compute time in a request, queueing and transfers excluded.

    ``where`` is ``"device"`` for a step the device ran, else the address of the server node that ran it.
    """

    partition: str
    where: str
    compute_ms: float


@dataclass
class _Estimate:
    """A robust exponentially weighted average of one ratio."""

    value: float
    published: float
    count: int = 1
    held: list[float] = field(default_factory=list)

    def add(self, sample: float, alpha: float) -> None:
        off = math.log(sample / self.value)
        if abs(off) > math.log(OUTLIER_FACTOR):
            if self.count < ESTABLISHED and off < 0:  # warm-up made the first runs slow: start again
                self.value, self.count, self.held = sample, 1, []
                return
            if self.held and (math.log(self.held[-1] / self.value) > 0) != (off > 0):
                self.held = []
            self.held.append(sample)
            if len(self.held) < 2:
                return  # one run is not a change of conditions
            self.value = math.exp(sum(math.log(h) for h in self.held) / len(self.held))
            self.count, self.held = 1, []
            return
        self.held = []
        self.value = (1 - alpha) * self.value + alpha * sample
        self.count += 1


@dataclass
class _Offset:
    """A robust exponentially weighted average of an additive quantity (ms), published on real moves."""

    value: float
    published: float
    count: int = 1
    held: list[float] = field(default_factory=list)

    def add(self, sample: float, alpha: float, significant: float) -> bool:
        """Adds a sample; True when the published value moved."""
        scale = max(abs(self.value), OFFSET_FLOOR_MS)
        off = sample - self.value
        if abs(off) > OUTLIER_FACTOR * scale:
            if self.count < ESTABLISHED and off < 0:  # warm-up made the first requests slow
                self.value, self.count, self.held = sample, 1, []
            elif self.held and (self.held[-1] > self.value) != (off > 0):
                self.held = [sample]
            else:
                self.held.append(sample)
                if len(self.held) >= 2:
                    self.value, self.count, self.held = sum(self.held) / len(self.held), 1, []
        else:
            self.held = []
            self.value = (1 - alpha) * self.value + alpha * sample
            self.count += 1
        if abs(self.value - self.published) > max(significant * abs(self.published), OFFSET_FLOOR_MS / 4):
            self.published = self.value
            return True
        return False


@dataclass
class _PlaceFit:
    """Exponentially weighted least squares of measured ms on base ms at one place, each sample weighted by
    1 / measured² so that the fit minimises relative error: a place's many small partitions (whose cost is
    mostly the fixed one; a cast or a pooling has no FLOPs) count as much as its few large ones, which would
    otherwise pull the line through the origin and price every small partition at nothing."""

    sw: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    published: tuple[float, float] | None = None

    def decay(self, keep: float) -> None:
        self.sw *= keep
        self.sx *= keep
        self.sy *= keep
        self.sxx *= keep
        self.sxy *= keep

    def add(self, x: float, y: float) -> None:
        w = 1.0 / max(y, 1e-6) ** 2
        self.sw += w
        self.sx += w * x
        self.sy += w * y
        self.sxx += w * x * x
        self.sxy += w * x * y

    def fit(self) -> tuple[float, float]:
        """(ratio, fixed ms): a line with ratio >= MIN_PLACE_RATIO and fixed >= 0."""
        mx, my = self.sx / self.sw, self.sy / self.sw
        var = self.sxx / self.sw - mx * mx
        through_origin = max(MIN_PLACE_RATIO, self.sxy / self.sxx) if self.sxx > 0 else 1.0
        if var <= (0.05 * mx) ** 2:  # bases too alike to tell a ratio from a fixed cost
            return through_origin, 0.0
        slope = (self.sxy / self.sw - mx * my) / var
        slope = max(MIN_PLACE_RATIO, slope)
        fixed = my - slope * mx
        if fixed < 0:
            return through_origin, 0.0
        return slope, fixed


def _overhead_keys(device_id: str, kind: str, model: str) -> tuple[str, ...]:
    """The device's overhead estimate over all its models, then the model's own (when a model is named)."""
    device = f"{_place('device', device_id)}:{kind}"
    return (device, f"{device}:{model}") if model else (device,)


def _place(kind: str, name: str) -> str:
    return f"{kind}:{name}"


@dataclass
class Calibration:
    alpha: float = 0.5
    significant: float = 0.1
    #: Weight kept by a place's earlier samples each time a request observes it.
    fit_keep: float = 0.7
    version: int = 0
    #: place -> "model@variant/partition" -> measured / base.
    _factors: dict[str, dict[str, _Estimate]] = field(default_factory=dict)
    _fits: dict[str, _PlaceFit] = field(default_factory=dict)
    #: The older API's whole-place ratios (observed / the caller's prediction).
    _place_ratio: dict[str, _Estimate] = field(default_factory=dict)
    _uplink_mbps: dict[str, _Estimate] = field(default_factory=dict)
    #: "device:<id>:offload" / ":local" (+ ":<model>") -> per-request overhead, ms.
    _overhead_ms: dict[str, _Offset] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the entry point ------------------------------------------------------------------------------------

    def observe_request(
        self,
        plan: Plan,
        steps: Iterable[MeasuredStep],
        *,
        device_id: str,
        measured_total_ms: float | None = None,
        learned_steps: Iterable[MeasuredStep] = (),
    ) -> int:
        """Learn from one request that ran ``plan``: ``steps`` are the measured compute times of its
        partitions (those the device ran, reported by the device, and those servers ran, from their
        timings; a device-only plan has only device steps). Returns how many samples were used.

        Each step is matched to the plan's placement of that partition and compared with its
        ``base_ms``; steps of partitions the plan does not place, that ran on the device when the plan put
        them on a server (or the other way round), with no base prediction, or whose time is not a
        plausible measurement, are ignored. A step that ran on another server than planned (an equivalent
        replica the balancer chose) calibrates the server that ran it, against the planned base.

        ``measured_total_ms``, when given, is the request's end-to-end inference latency as the device
        measured it (cold costs excluded: plan RPC, RTT probe, artifact pulls). What it has beyond the
        measured compute and the plan's predicted transfers is the per-request overhead (dispatch, RPCs,
        framework work) that no partition shows; it is learned per device for plans that use servers and
        for device-only plans, and the cost model adds it to every plan of that kind. ``learned_steps`` are
        measured steps of the same request learnt from already (the servers' timings, observed when the
        request ran): they count as measured compute in the overhead and are not learnt from again. A total
        below the measured compute is not a measurement of the request and is dropped.
        """
        steps = list(steps)
        placements = {p.partition: p for p in plan.placements}
        accepted: dict[str, list[tuple[str, float, float]]] = {}
        for step in steps:
            placement = placements.get(step.partition)
            if placement is None or not placement.base_ms > 0 or not math.isfinite(placement.base_ms):
                continue
            on_device = step.where == ON_DEVICE
            if on_device != placement.on_device or (not on_device and not step.where):
                continue
            measured = step.compute_ms
            if not (math.isfinite(measured) and 0 < measured <= MAX_STEP_MS):
                continue
            base = max(placement.base_ms, BASE_FLOOR_S * 1e3)
            ratio = measured / base
            if not RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
                continue
            place = _place("device", device_id) if on_device else _place("server", step.where)
            key = f"{plan.model}@{plan.variant}/{step.partition}"
            accepted.setdefault(place, []).append((key, base, measured))
        if measured_total_ms is not None:
            prefix = f"{plan.model}@{plan.variant}/"
            compute = {key.removeprefix(prefix): ms for samples in accepted.values() for key, _, ms in samples}
            for step in learned_steps:
                if step.partition in placements and math.isfinite(step.compute_ms) and step.compute_ms > 0:
                    compute.setdefault(step.partition, step.compute_ms)
            self._observe_overhead(plan, compute, device_id, measured_total_ms)
        with self._lock:
            for place, samples in accepted.items():
                table = self._factors.setdefault(place, {})
                fit = self._fits.setdefault(place, _PlaceFit())
                fit.decay(self.fit_keep)
                for key, base, measured in samples:
                    self._add(table, key, measured / base)
                    fit.add(base, measured)
                ratio, fixed = fit.fit()
                if fit.published is None or self._moved(fit.published, (ratio, fixed)):
                    fit.published = (ratio, fixed)
                    self.version += 1
        return sum(len(s) for s in accepted.values())

    def _observe_overhead(self, plan: Plan, measured: dict[str, float], device_id: str, total_ms: float) -> None:
        if not (math.isfinite(total_ms) and 0 < total_ms <= MAX_STEP_MS):
            return
        if total_ms < sum(measured.values()):  # less than what was measured to run inside it
            return
        compute = {p.partition: p.predicted_ms for p in plan.placements} | measured
        transfers = sum(c.predicted_ms for c in plan.crossings)
        # It may cancel an overestimate of the transfers, not more: compute was measured.
        sample = max(total_ms - sum(compute.values()) - transfers, -transfers)
        kind = "offload" if any(not p.on_device for p in plan.placements) else "local"
        with self._lock:
            for key in _overhead_keys(device_id, kind, plan.model):
                estimate = self._overhead_ms.get(key)
                if estimate is None:
                    self._overhead_ms[key] = _Offset(sample, sample)
                    self.version += 1
                elif estimate.add(sample, self.alpha, self.significant):
                    self.version += 1

    # -- the older per-method API ------------------------------------------------------------------------

    def observe_server(self, address: str, observed_ms: float, predicted_ms: float) -> None:
        """A partition ran on ``address`` in ``observed_ms`` where the model predicted ``predicted_ms``."""
        self._observe_ratio(self._place_ratio, _place("server", address), observed_ms, predicted_ms)

    def observe_device(self, device_id: str, observed_ms: float, predicted_ms: float) -> None:
        self._observe_ratio(self._place_ratio, _place("device", device_id), observed_ms, predicted_ms)

    def observe_device_partition(self, device_id: str, partition: str, observed_ms: float, predicted_ms: float) -> None:
        """One partition ("model@variant/partition") ran on the device in ``observed_ms`` where FLOPs over the
        device's reported FLOP/s predicted ``predicted_ms`` (the base prediction)."""
        with self._lock:
            table = self._factors.setdefault(_place("device", device_id), {})
        self._observe_ratio(table, partition, observed_ms, max(predicted_ms, BASE_FLOOR_S * 1e3))

    def observe_uplink(self, device_id: str, nbytes: int, seconds: float) -> None:
        """A transfer of ``nbytes`` from the device took ``seconds`` (payload time, RTT excluded)."""
        if nbytes > 0 and math.isfinite(seconds) and seconds > 0:
            rate = nbytes * 8 / seconds / 1e6
            if 1e-6 <= rate <= 1e6:
                with self._lock:
                    self._add(self._uplink_mbps, device_id, rate)

    # -- applying it ----------------------------------------------------------------------------------------

    def server(self, profile: ServerProfile) -> ServerProfile:
        ratio, fixed, factors = self._place_terms(_place("server", profile.address))
        return replace(profile, compute_ratio=ratio, fixed_ms=fixed, partition_factors=factors)

    def device(self, device_id: str, profile: DeviceProfile, model: str = "") -> DeviceProfile:
        """``profile`` calibrated for ``device_id``, with the per-request overheads of ``model`` (the
        device's over all its models when it has not run this one)."""
        ratio, fixed, factors = self._place_terms(_place("device", device_id))
        with self._lock:
            uplink = self._uplink_mbps.get(device_id)
            offload, local = (self._overhead(device_id, kind, model) for kind in ("offload", "local"))
        profile = replace(
            profile,
            compute_ratio=ratio,
            fixed_ms=fixed,
            partition_factors=factors,
            offload_overhead_ms=offload.published if offload is not None else profile.offload_overhead_ms,
            local_overhead_ms=local.published if local is not None else profile.local_overhead_ms,
        )
        if uplink is not None:
            profile = replace(profile, uplink_mbps=uplink.published)
        return profile

    def _overhead(self, device_id: str, kind: str, model: str) -> _Offset | None:
        """The model's own overhead estimate on the device, else the device's over all models (lock held)."""
        for key in reversed(_overhead_keys(device_id, kind, model)):
            estimate = self._overhead_ms.get(key)
            if estimate is not None:
                return estimate
        return None

    def predicted_ms(self, place_kind: str, name: str, key: str, base_ms: float) -> float:
        """What the calibrated cost model predicts for partition ``key`` with ``base_ms`` at a place
        (``place_kind`` "device" with a device id, or "server" with an address): for reports and tests."""
        ratio, fixed, factors = self._place_terms(_place(place_kind, name))
        factor = dict(factors).get(key)
        if factor is not None:
            return max(base_ms, BASE_FLOOR_S * 1e3) * factor
        return base_ms * ratio + fixed

    # -- internals ------------------------------------------------------------------------------------------

    def _place_terms(self, place: str) -> tuple[float, float, tuple[tuple[str, float], ...]]:
        with self._lock:
            fit = self._fits.get(place)
            old = self._place_ratio.get(place)
            factors = tuple(sorted((k, e.published) for k, e in self._factors.get(place, {}).items()))
        if fit is not None and fit.published is not None:
            ratio, fixed = fit.published
        else:
            ratio, fixed = (old.published if old is not None else 1.0), 0.0
        return ratio, fixed, factors

    def _observe_ratio(self, table: dict[str, _Estimate], key: str, observed_ms: float, predicted_ms: float) -> None:
        if not (math.isfinite(observed_ms) and math.isfinite(predicted_ms)):
            return
        if 0 < observed_ms <= MAX_STEP_MS and predicted_ms > 0:
            ratio = observed_ms / predicted_ms
            if RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
                with self._lock:
                    self._add(table, key, ratio)

    def _add(self, table: dict[str, _Estimate], key: str, sample: float) -> None:
        """Caller holds the lock."""
        estimate = table.get(key)
        if estimate is None:
            table[key] = _Estimate(sample, sample)
            self.version += 1
            return
        estimate.add(sample, self.alpha)
        if abs(estimate.value - estimate.published) > self.significant * estimate.published:
            estimate.published = estimate.value
            self.version += 1

    def _moved(self, old: tuple[float, float], new: tuple[float, float]) -> bool:
        ratio_moved = abs(new[0] - old[0]) > self.significant * old[0]
        fixed_moved = abs(new[1] - old[1]) > self.significant * max(old[1], 0.05)
        return ratio_moved or fixed_moved
