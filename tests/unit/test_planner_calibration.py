"""Calibration from measured step times: against the base prediction, per place, with a fixed cost, robust."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from splitinfer.planner import (
    DeviceProfile,
    Edge,
    PartitionCost,
    Plan,
    PlanningProblem,
    ServerProfile,
    VariantProfile,
)
from splitinfer.planner.calibration import Calibration, MeasuredStep
from splitinfer.planner.planner import Planner
from splitinfer.planner.profiles import DEFAULT_CODECS


def _chain(model: str, flops: list[float], out_bytes: int = 100_000) -> VariantProfile:
    n = len(flops)
    return VariantProfile(
        model,
        "fp32",
        0.9,
        True,
        tuple(PartitionCost(f"p{i}", f, 1 << 20) for i, f in enumerate(flops)),
        (
            Edge("input", -1, 0, 150_000),
            *(Edge(f"t{i}", i, i + 1, out_bytes) for i in range(n - 1)),
            Edge("out", n - 1, n, 4_000),
        ),
    )


def _problem(variant: VariantProfile, uplink_mbps: float = 20.0) -> PlanningProblem:
    return PlanningProblem(
        variants=(variant,),
        device=DeviceProfile(flops=2e9, uplink_mbps=uplink_mbps, downlink_mbps=50, rtt_ms=10),
        servers=(ServerProfile("edge:1", 5e10),),
        codecs=DEFAULT_CODECS[:1],
    )


#: The "real" machines: each place runs ratio x base + fixed ms (the device 4x slower than it reports and
#: 2 ms per partition; the server 2.5x and 0.5 ms).
TRUTH = {"device": (4.0, 2.0), "edge:1": (2.5, 0.5)}


def _measure(plan: Plan, truth: dict[str, tuple[float, float]] = TRUTH) -> list[MeasuredStep]:
    steps = []
    for p in plan.placements:
        ratio, fixed = truth[p.where]
        steps.append(MeasuredStep(p.partition, p.where, ratio * p.base_ms + fixed))
    return steps


def _errors(plan: Plan, truth: dict[str, tuple[float, float]] = TRUTH) -> list[float]:
    out = []
    for p in plan.placements:
        ratio, fixed = truth[p.where]
        measured = ratio * p.base_ms + fixed
        out.append(abs(p.predicted_ms - measured) / measured)
    return out


def test_predictions_converge_to_measurements_not_to_their_square_root() -> None:
    """Observing against the base prediction: the calibrated predictions match the truth, for both places
    (the old bug settled at the square root of the true ratio)."""
    planner = Planner()
    for uplink in (0.5, 500.0):  # a device-only plan first, then one that uses the server
        problem = _problem(_chain("m", [2e8, 4e8, 1e8, 3e7]), uplink_mbps=uplink)
        for _ in range(3):
            plan = planner.plan(problem, device_id="d1")
            planner.calibration.observe_request(plan, _measure(plan), device_id="d1")
        plan = planner.plan(problem, device_id="d1")
        assert max(_errors(plan)) < 0.02, plan


def test_device_only_plans_calibrate_the_device() -> None:
    calibration = Calibration()
    planner = Planner(calibration=calibration)
    problem = _problem(_chain("m", [2e8, 4e8]), uplink_mbps=0.05)
    plan = planner.plan(problem, device_id="d1")
    assert all(p.on_device for p in plan.placements) and plan.route is None
    assert calibration.observe_request(plan, _measure(plan), device_id="d1") == 2
    profile = calibration.device("d1", problem.device)
    assert dict(profile.partition_factors)["m@fp32/p0"] == pytest.approx(4.0 + 2.0 / 100.0)


def test_a_new_model_on_a_known_place_is_predicted_with_the_fixed_cost() -> None:
    """The place model (ratio and per-partition fixed cost) predicts partitions never measured there."""
    calibration = Calibration()
    planner = Planner(calibration=calibration)
    known = _problem(_chain("known", [1e7, 2e8, 6e8, 5e6]), uplink_mbps=0.05)
    for _ in range(3):
        plan = planner.plan(known, device_id="d1")
        calibration.observe_request(plan, _measure(plan), device_id="d1")
    ratio, fixed, _ = calibration._place_terms("device:d1")
    assert ratio == pytest.approx(4.0, rel=1e-6) and fixed == pytest.approx(2.0, rel=1e-6)
    fresh = _problem(_chain("fresh", [3e6, 9e8]), uplink_mbps=0.05)
    plan = planner.plan(fresh, device_id="d1")
    assert max(_errors(plan)) < 0.01
    # Without the fixed cost the tiny partition would be predicted at a fraction of its time.
    tiny = next(p for p in plan.placements if p.partition == "p0")
    assert tiny.predicted_ms > 2.0 and tiny.base_ms < 2.0


def test_one_outlier_does_not_move_an_estimate_but_a_real_change_does() -> None:
    calibration = Calibration()
    plan = Planner(calibration=calibration).plan(_problem(_chain("m", [2e8]), uplink_mbps=0.05), device_id="d")
    base = plan.placements[0].base_ms

    def factor() -> float:
        return dict(calibration.device("d", plan_device()).partition_factors)["m@fp32/p0"]

    def plan_device() -> DeviceProfile:
        return DeviceProfile(flops=2e9, uplink_mbps=1, downlink_mbps=1)

    for _ in range(4):
        calibration.observe_request(plan, [MeasuredStep("p0", "device", 3 * base)], device_id="d")
    assert factor() == pytest.approx(3.0)
    calibration.observe_request(plan, [MeasuredStep("p0", "device", 300 * base)], device_id="d")  # one hiccup
    assert factor() == pytest.approx(3.0)
    calibration.observe_request(plan, [MeasuredStep("p0", "device", 3 * base)], device_id="d")
    for _ in range(2):  # the device really became slower (throttled): two runs agree
        calibration.observe_request(plan, [MeasuredStep("p0", "device", 30 * base)], device_id="d")
    assert factor() == pytest.approx(30.0, rel=0.01)


def test_a_slow_first_run_is_forgotten_at_once() -> None:
    """Warm-up (lazy loads, first-call compilation) makes the first run slow; the next fast one replaces it."""
    calibration = Calibration()
    plan = Planner(calibration=calibration).plan(_problem(_chain("m", [2e8]), uplink_mbps=0.05), device_id="d")
    base = plan.placements[0].base_ms
    calibration.observe_request(plan, [MeasuredStep("p0", "device", 50 * base)], device_id="d")
    calibration.observe_request(plan, [MeasuredStep("p0", "device", 2 * base)], device_id="d")
    profile = calibration.device("d", DeviceProfile(flops=2e9, uplink_mbps=1, downlink_mbps=1))
    assert dict(profile.partition_factors)["m@fp32/p0"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "step",
    [
        MeasuredStep("p0", "device", math.nan),
        MeasuredStep("p0", "device", math.inf),
        MeasuredStep("p0", "device", -1.0),
        MeasuredStep("p0", "device", 0.0),
        MeasuredStep("p0", "device", 1e9),  # eleven days of compute: not a measurement
        MeasuredStep("p0", "edge:1", 5.0),  # the plan ran p0 on the device, not on a server
        MeasuredStep("p0", "", 5.0),
        MeasuredStep("nope", "device", 5.0),  # not a partition of the plan
    ],
)
def test_implausible_or_mismatched_steps_are_ignored(step: MeasuredStep) -> None:
    calibration = Calibration()
    plan = Planner(calibration=calibration).plan(_problem(_chain("m", [2e8]), uplink_mbps=0.05), device_id="d")
    version = calibration.version
    assert calibration.observe_request(plan, [step], device_id="d") == 0
    assert calibration.version == version
    profile = calibration.device("d", DeviceProfile(flops=2e9, uplink_mbps=1, downlink_mbps=1))
    assert profile.partition_factors == () and profile.compute_ratio == 1.0 and profile.fixed_ms == 0.0


def test_a_plan_without_base_predictions_is_not_observed() -> None:
    """A plan from an older peer carries no base_ms: nothing to compare with, nothing learned."""
    calibration = Calibration()
    plan = Planner(calibration=calibration).plan(_problem(_chain("m", [2e8]), uplink_mbps=0.05), device_id="d")
    old = replace(plan, placements=tuple(replace(p, base_ms=0.0) for p in plan.placements))
    assert calibration.observe_request(old, [MeasuredStep("p0", "device", 5.0)], device_id="d") == 0


def test_base_predictions_round_trip_through_the_proto() -> None:
    plan = Planner().plan(_problem(_chain("m", [2e8, 4e8]), uplink_mbps=500), device_id="d")
    assert all(p.base_ms > 0 for p in plan.placements)
    back = Plan.from_proto(plan.to_proto())
    assert [p.base_ms for p in back.placements] == [p.base_ms for p in plan.placements]


def test_server_steps_on_an_equivalent_replica_calibrate_that_replica() -> None:
    calibration = Calibration()
    plan = Planner(calibration=calibration).plan(_problem(_chain("m", [2e8, 4e8]), uplink_mbps=500), device_id="d")
    server_parts = [p for p in plan.placements if not p.on_device]
    assert server_parts
    steps = [MeasuredStep(p.partition, "edge:2", 2 * p.base_ms) for p in server_parts]
    assert calibration.observe_request(plan, steps, device_id="d") == len(steps)
    replica = calibration.server(ServerProfile("edge:2", 5e10))
    assert {k for k, _ in replica.partition_factors} == {f"m@fp32/{p.partition}" for p in server_parts}
    assert calibration.server(ServerProfile("edge:1", 5e10)).partition_factors == ()


def test_the_old_per_method_api_still_calibrates() -> None:
    calibration = Calibration()
    calibration.observe_server("edge:1", observed_ms=20.0, predicted_ms=10.0)
    assert calibration.server(ServerProfile("edge:1", 5e10)).compute_ratio == pytest.approx(2.0)
    calibration.observe_device("d", observed_ms=30.0, predicted_ms=10.0)
    assert calibration.device("d", DeviceProfile(1e9, 1, 1)).compute_ratio == pytest.approx(3.0)
    calibration.observe_device_partition("d", "m@fp32/p0", observed_ms=5.0, predicted_ms=1.0)
    assert dict(calibration.device("d", DeviceProfile(1e9, 1, 1)).partition_factors) == {"m@fp32/p0": 5.0}


def _total(plan: Plan, overhead_ms: float) -> float:
    """The "real" end-to-end latency: true compute, the modelled transfers, and a per-request overhead."""
    compute = sum(step.compute_ms for step in _measure(plan))
    return compute + sum(c.predicted_ms for c in plan.crossings) + overhead_ms


def test_the_per_request_overhead_is_learned_from_measured_totals() -> None:
    """Measured end-to-end latency less measured compute less predicted transfers is the overhead no
    partition shows; the planner's end-to-end prediction then matches, for offloaded and local plans."""
    planner = Planner()
    overhead = {True: 9.0, False: 1.5}  # offloaded: dispatch and RPCs; local: framework work
    for uplink in (500.0, 0.05):
        problem = _problem(_chain("m", [2e8, 4e8, 1e8, 3e7]), uplink_mbps=uplink)
        for _ in range(4):
            plan = planner.plan(problem, device_id="d1")
            offloaded = plan.route is not None
            total = _total(plan, overhead[offloaded])
            planner.calibration.observe_request(plan, _measure(plan), device_id="d1", measured_total_ms=total)
        plan = planner.plan(problem, device_id="d1")
        offloaded = plan.route is not None
        assert plan.predicted_latency_ms == pytest.approx(_total(plan, overhead[offloaded]), rel=0.02)
    profile = planner.calibration.device("d1", _problem(_chain("m", [1e8])).device)
    assert profile.offload_overhead_ms == pytest.approx(9.0, abs=0.5)
    assert profile.local_overhead_ms == pytest.approx(1.5, abs=0.5)


@pytest.mark.parametrize("total", [math.nan, -1.0, 0.0, 1e12])
def test_implausible_totals_teach_no_overhead(total: float) -> None:
    calibration = Calibration()
    plan = Planner(calibration=calibration).plan(_problem(_chain("m", [2e8]), uplink_mbps=0.05), device_id="d")
    calibration.observe_request(plan, _measure(plan), device_id="d", measured_total_ms=total)
    profile = calibration.device("d", DeviceProfile(flops=2e9, uplink_mbps=1, downlink_mbps=1))
    assert profile.local_overhead_ms == 0.0 and profile.offload_overhead_ms == 0.0


def test_dominance_uses_calibrated_times_not_reported_flops() -> None:
    """A server that reports more FLOP/s but was measured slower on a partition does not dominate the other:
    the exact solvers keep both and put that partition where it really runs faster."""
    from splitinfer.planner import DagSolver
    from splitinfer.planner.base import undominated_servers

    variant = _chain("m", [4e8, 4e8])
    fast_on_paper = ServerProfile("a:1", 1e11, partition_factors=(("m@fp32/p1", 50.0),))
    honest = ServerProfile("b:1", 5e10)
    problem = replace(_problem(variant, uplink_mbps=500.0), servers=(fast_on_paper, honest))
    assert undominated_servers(problem) == [0, 1]
    plan = DagSolver().solve(replace(problem, device=replace(problem.device, computes=False)))
    assert {p.partition: p.where for p in plan.placements}["p1"] == "b:1"
    assert undominated_servers(replace(problem, servers=(replace(fast_on_paper, partition_factors=()), honest))) == [0]


def test_each_model_keeps_its_own_overhead_and_a_new_model_gets_the_devices() -> None:
    """A model with many tensors pays more per request than a small one on the same device: each is
    predicted with its own overhead, and a model the device has not run yet with the device's estimate."""
    planner = Planner()
    overhead = {"big": 40.0, "small": 3.0}
    for model, ms in overhead.items():
        problem = _problem(_chain(model, [2e8, 4e8]), uplink_mbps=0.05)  # device-only at this uplink
        for _ in range(4):
            plan = planner.plan(problem, device_id="d")
            planner.calibration.observe_request(plan, _measure(plan), device_id="d", measured_total_ms=_total(plan, ms))
    for model, ms in overhead.items():
        plan = planner.plan(_problem(_chain(model, [2e8, 4e8]), uplink_mbps=0.05), device_id="d")
        assert plan.predicted_latency_ms == pytest.approx(_total(plan, ms), rel=0.02)
    device = _problem(_chain("m", [1e8])).device
    assert planner.calibration.device("d", device, "small").local_overhead_ms == pytest.approx(3.0, abs=0.3)
    unseen = planner.calibration.device("d", device, "never-ran").local_overhead_ms
    assert 3.0 < unseen < 40.0  # the device's estimate over the models it ran


def test_a_total_below_the_measured_compute_teaches_no_overhead() -> None:
    """Server timings of the request (learnt from already) count as measured compute: a device total below
    them is not a measurement of that request."""
    calibration = Calibration()
    plan = Planner(calibration=calibration).plan(_problem(_chain("m", [2e8, 4e8]), uplink_mbps=500), device_id="d")
    servers = [MeasuredStep(p.partition, p.where, 50.0) for p in plan.placements if not p.on_device]
    assert servers
    calibration.observe_request(plan, [], device_id="d", measured_total_ms=10.0, learned_steps=servers)
    assert calibration.device("d", DeviceProfile(flops=2e9, uplink_mbps=1, downlink_mbps=1)).offload_overhead_ms == 0
    total = 50.0 * len(servers) + sum(p.predicted_ms for p in plan.placements if p.on_device) + 30.0
    calibration.observe_request(plan, [], device_id="d", measured_total_ms=total, learned_steps=servers)
    assert calibration.device("d", DeviceProfile(flops=2e9, uplink_mbps=1, downlink_mbps=1)).offload_overhead_ms > 0


def test_the_place_model_keeps_the_fixed_cost_of_small_partitions() -> None:
    """Many FLOP-free partitions (casts, pooling) at ~2 ms each and a few large ones that run faster than their
    base: an ordinary least-squares line is pulled through the origin by the large ones and prices an unmeasured
    small partition at nothing; the relative-error fit keeps their fixed cost."""
    from splitinfer.planner.calibration import _PlaceFit

    fit = _PlaceFit()
    for x, y in [(0.0, 2.0), (0.0, 2.2), (0.001, 1.9), (0.01, 2.1), (50.0, 10.0), (100.0, 20.0), (200.0, 80.0)]:
        fit.add(x, y)  # ordinary least squares: ratio 0.36, fixed -1.1, so the line through the origin
    ratio, fixed = fit.fit()
    assert 1.5 < fixed < 2.5  # an unmeasured FLOP-free partition costs what the measured ones did
    assert 0.7 < (ratio * 100.0 + fixed) / 20.0 < 1.3  # and a large one about what it measured
