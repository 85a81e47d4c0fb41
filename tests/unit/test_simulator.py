"""The scenario simulator and its traces."""

from __future__ import annotations

import statistics

import pytest

from splitinfer.planner import CpSatSolver, GreedySolver, NeurosurgeonSolver, Requirements, ServerProfile
from splitinfer.planner.planner import Planner
from splitinfer.planner.profiles import DEFAULT_CODECS
from splitinfer.sim import STANDARD_UPLINKS_MBPS, DeviceClassSpec, Scenario, bandwidth_trace, simulate, stepped_trace
from tests.unit.test_planner import _cnn


@pytest.mark.parametrize("profile", sorted(STANDARD_UPLINKS_MBPS))
def test_traces_keep_the_profile_mean(profile: str) -> None:
    trace = bandwidth_trace(STANDARD_UPLINKS_MBPS[profile], 20_000, seed=1)
    assert statistics.fmean(trace) == pytest.approx(STANDARD_UPLINKS_MBPS[profile], rel=0.1)
    assert min(trace) > 0 and statistics.pstdev(trace) > 0
    assert bandwidth_trace(1.0, 50, seed=3) == bandwidth_trace(1.0, 50, seed=3)  # reproducible


def test_stepped_trace_steps_through_profiles() -> None:
    trace = stepped_trace(["Wi-Fi", "CAT1"], 500, seed=0)
    assert statistics.fmean(trace[:500]) > 50 * statistics.fmean(trace[500:])


def _scenario(profile: str, charging: bool = True) -> Scenario:
    return Scenario(
        name=profile,
        variants=(_cnn(),),
        servers=(ServerProfile("edge:1", 5e10), ServerProfile("cloud:1", 1e11)),
        codecs=DEFAULT_CODECS[:2],
        requirements=Requirements(max_latency_ms=1500),
        device_classes=(DeviceClassSpec("phone", 2e9, 3.0, 1.5, battery_wh=0.05, charging=charging),),
        uplink_trace=tuple(bandwidth_trace(STANDARD_UPLINKS_MBPS[profile], 60, seed=2)),
        devices=4,
    )


def test_planner_beats_a_fixed_baseline_where_the_network_is_slow() -> None:
    planner = Planner(CpSatSolver())
    ours = simulate(_scenario("CAT1"), lambda problem, device: planner.plan(problem, device_id=device), "cp-sat")
    neuro = simulate(_scenario("CAT1"), lambda problem, _: NeurosurgeonSolver().solve(problem), "neurosurgeon")
    assert ours.requests == 60 and ours.mean_latency_ms <= neuro.mean_latency_ms * 1.001
    assert planner.hits > 0  # bucketed conditions reuse plans


def test_batteries_drain_and_metrics_are_consistent() -> None:
    metrics = simulate(_scenario("3G", charging=False), lambda p, _: GreedySolver().solve(p), "greedy")
    assert 0 <= metrics.final_battery_percent < 100
    assert metrics.p95_latency_ms >= metrics.mean_latency_ms * 0.5 and 0 <= metrics.slo_violation_rate <= 1
    assert metrics.mean_energy_mj > 0 and metrics.mean_accuracy == pytest.approx(0.9)
