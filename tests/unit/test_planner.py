"""The Planner: CP-SAT is optimal against the exhaustive oracle, and plans move as conditions change."""

from __future__ import annotations

from dataclasses import replace

import pytest

from splitinfer.errors import Unavailable
from splitinfer.planner import (
    ChainSolver,
    CpSatSolver,
    DadsSolver,
    DeviceProfile,
    Edge,
    ExhaustiveSolver,
    GreedySolver,
    NeurosurgeonSolver,
    PartitionCost,
    Plan,
    PlanningProblem,
    Requirements,
    ServerProfile,
    VariantProfile,
)
from splitinfer.planner.calibration import Calibration
from splitinfer.planner.cost import evaluate
from splitinfer.planner.plan import assignment_of
from splitinfer.planner.planner import Planner
from splitinfer.planner.profiles import DEFAULT_CODECS, random_problem


def _objective(problem: PlanningProblem, plan: Plan) -> float:
    """Re-scores a plan from its placements and codecs with the cost model."""
    ev = evaluate(problem, assignment_of(problem, plan))
    return ev.objective + 1e6 * ev.violation


@pytest.mark.parametrize("seed", range(24))
def test_cpsat_equals_the_exhaustive_optimum(seed: int) -> None:
    problem = random_problem(seed, partitions=4, servers=2, variants=2, codecs=3, dag=seed % 2 == 1)
    exact = ExhaustiveSolver().solve(problem)
    cpsat = CpSatSolver().solve(problem)
    assert _objective(problem, cpsat) == pytest.approx(_objective(problem, exact), rel=1e-6, abs=1e-5)
    assert cpsat.violated == exact.violated
    # The heuristics are never better than the optimum.
    for solver in (GreedySolver(), NeurosurgeonSolver(), DadsSolver()):
        assert _objective(problem, solver.solve(problem)) >= _objective(problem, exact) - 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_cpsat_equals_exhaustive_with_three_servers_and_a_dag(seed: int) -> None:
    problem = random_problem(100 + seed, partitions=3, servers=3, variants=1, codecs=3, dag=True)
    assert _objective(problem, CpSatSolver().solve(problem)) == pytest.approx(
        _objective(problem, ExhaustiveSolver().solve(problem)), rel=1e-6, abs=1e-5
    )


def _cnn(variant: str = "large", accuracy: float = 0.9, scale: float = 1.0) -> VariantProfile:
    flops = [0.3e9, 0.8e9, 0.9e9, 0.6e9]
    out = [800_000, 400_000, 200_000, 4_000]
    return VariantProfile(
        "cnn",
        variant,
        accuracy,
        True,
        tuple(PartitionCost(f"p{i}", f * scale, 1 << 20) for i, f in enumerate(flops)),
        (
            Edge("input", -1, 0, 602_112),
            *(Edge(f"t{i}", i, i + 1, out[i]) for i in range(3)),
            Edge("out", 3, 4, out[3]),
        ),
    )


def _problem(**device: object) -> PlanningProblem:
    base = DeviceProfile(flops=2e9, uplink_mbps=18.88, downlink_mbps=50, rtt_ms=20, charging=True)
    return PlanningProblem(
        variants=(_cnn(),),
        device=replace(base, **device),  # type: ignore[arg-type]
        servers=(ServerProfile("edge:1", 5e10), ServerProfile("cloud:1", 1e11, queue_ms=5)),
        codecs=DEFAULT_CODECS[:2],  # lossless only: these tests are about placement
    )


def _device_flops(problem: PlanningProblem, plan: Plan) -> float:
    variant = next(v for v in problem.variants if v.variant == plan.variant)
    costs = {p.name: p.flops for p in variant.partitions}
    return sum(costs[p.partition] for p in plan.placements if p.on_device)


def test_work_moves_to_the_device_as_bandwidth_falls() -> None:
    device_work = []
    for mbps in (18.88, 5.85, 1.1, 0.13):
        problem = _problem(uplink_mbps=mbps)
        device_work.append(_device_flops(problem, CpSatSolver().solve(problem)))
    assert device_work == sorted(device_work) and device_work[-1] > device_work[0], device_work


def test_work_moves_off_the_device_as_the_battery_falls() -> None:
    device_work = []
    for battery in (100, 60, 30, 5):
        problem = _problem(
            uplink_mbps=1.1, battery_percent=battery, charging=False, compute_power_w=5.0, transmit_power_w=0.5
        )
        device_work.append(_device_flops(problem, CpSatSolver().solve(problem)))
    assert device_work == sorted(device_work, reverse=True) and device_work[-1] < device_work[0], device_work


def test_smaller_variant_only_when_accuracy_allows() -> None:
    problem = replace(_problem(uplink_mbps=0.13), variants=(_cnn(), _cnn("small", 0.8, 0.25)))
    assert CpSatSolver().solve(problem).variant == "small"  # faster, and nothing forbids it
    strict = replace(problem, requirements=Requirements(min_accuracy=0.85))
    plan = CpSatSolver().solve(strict)
    assert plan.variant == "large" and plan.feasible


def test_lossy_codec_only_when_accuracy_allows() -> None:
    problem = replace(_problem(uplink_mbps=1.1, flops=1e8), codecs=DEFAULT_CODECS)
    loose = CpSatSolver().solve(problem)
    assert any(c.codec.is_lossy for c in loose.crossings)  # compressing int8 pays on a slow link
    strict = CpSatSolver().solve(replace(problem, requirements=Requirements(min_accuracy=0.9)))
    assert strict.crossings and not any(c.codec.is_lossy for c in strict.crossings)
    assert strict.predicted_accuracy == pytest.approx(0.9)


def test_infeasible_requests_name_the_violated_requirement() -> None:
    too_fast = CpSatSolver().solve(replace(_problem(), requirements=Requirements(max_latency_ms=1)))
    assert too_fast.violated == ("max_latency_ms",) and "violates" in too_fast.reason
    too_good = CpSatSolver().solve(replace(_problem(), requirements=Requirements(min_accuracy=0.99)))
    assert too_good.violated == ("min_accuracy",)
    for solver in (GreedySolver(), ExhaustiveSolver(), NeurosurgeonSolver(), DadsSolver()):
        assert (
            "max_latency_ms" in solver.solve(replace(_problem(), requirements=Requirements(max_latency_ms=1))).violated
        )


def test_hosting_is_respected() -> None:
    problem = replace(
        _problem(uplink_mbps=50),
        servers=(ServerProfile("a:1", 1e12, hosts=frozenset({"cnn@large/p0"})), ServerProfile("b:1", 1e10)),
    )
    plan = CpSatSolver().solve(problem)
    assert all(p.where == "b:1" for p in plan.placements if p.partition != "p0" and not p.on_device)


def test_plan_prints_and_round_trips_through_its_proto() -> None:
    plan = CpSatSolver().solve(replace(_problem(uplink_mbps=5.85), codecs=DEFAULT_CODECS))
    text = str(plan)
    assert "partition" in text and "predicted" in text and plan.model in text
    again = Plan.from_proto(Plan.from_proto(plan.to_proto()).to_proto())
    assert again == plan and again.summary() == plan.summary()
    if plan.route is not None:
        assert all(step.addresses for step in plan.route.steps)


def test_device_memory_limits_the_head() -> None:
    problem = _problem(uplink_mbps=0.13, memory_bytes=(1 << 20) + 10)  # room for one partition
    plan = CpSatSolver().solve(problem)
    assert len(plan.device_partitions) <= 1


def test_plan_cache_buckets_conditions_and_replans_on_change() -> None:
    planner = Planner(GreedySolver())
    first = planner.plan(_problem(uplink_mbps=5.85))
    assert planner.plan(_problem(uplink_mbps=5.9)) is first  # same log-bucket: cached
    assert planner.hits == 1 and planner.misses == 1
    planner.plan(_problem(uplink_mbps=1.1))  # another bucket
    planner.plan(_problem(uplink_mbps=5.85), registry_version=7)  # the cluster changed
    assert planner.misses == 3


def test_calibration_corrects_predictions() -> None:
    calibration = Calibration()
    planner = Planner(CpSatSolver(), calibration)
    problem = _problem(uplink_mbps=18.88)
    before = planner.plan(problem, device_id="d1")
    for _ in range(5):  # the uplink turns out to be far slower than reported
        calibration.observe_uplink("d1", 1_000_000, 10.0)
    after = planner.plan(problem, device_id="d1")
    assert after is not before and _device_flops(problem, after) > _device_flops(problem, before)
    version = calibration.version
    calibration.observe_uplink("d1", 1_000_000, 10.01)  # within 10%: no new version, no re-plan
    assert calibration.version == version


@pytest.mark.parametrize("seed", range(30))
def test_chain_solver_equals_the_exhaustive_optimum(seed: int) -> None:
    from splitinfer.planner import ChainSolver

    problem = random_problem(300 + seed, partitions=4, servers=2 + seed % 2, variants=2, codecs=3 + seed % 2)
    assert _objective(problem, ChainSolver().solve(problem)) == pytest.approx(
        _objective(problem, ExhaustiveSolver().solve(problem)), rel=1e-6, abs=1e-5
    )


def test_auto_solver_uses_the_chain_solver_only_for_chains() -> None:
    from splitinfer.planner import AutoSolver, ChainSolver

    chain = random_problem(1, partitions=4, dag=False)
    assert AutoSolver().solve(chain).solver == "chain"
    dag = next(p for p in (random_problem(s, partitions=5, dag=True) for s in range(50))
               if any(e.dst > e.src + 1 for v in p.variants for e in v.edges if e.src >= 0))  # fmt: skip
    assert AutoSolver().solve(dag).solver == "dag-dp"
    # Given a DAG, the chain solver hands it to the exact DAG solver rather than mis-scoring it.
    assert _objective(dag, ChainSolver().solve(dag)) == pytest.approx(_objective(dag, ExhaustiveSolver().solve(dag)))


@pytest.mark.parametrize("solver", [ExhaustiveSolver(), GreedySolver(), ChainSolver(), CpSatSolver()])
def test_a_device_that_computes_nothing_gets_everything_on_servers(solver) -> None:  # type: ignore[no-untyped-def]
    # At 0.13 Mbps the best plan for a computing device keeps work on it; one that runs nothing must not.
    problem = _problem(uplink_mbps=0.13)
    assert CpSatSolver().solve(problem).device_partitions
    thin = replace(problem, device=replace(problem.device, computes=False))
    plan = solver.solve(thin)
    assert plan.device_partitions == [] and plan.route is not None


def test_a_device_that_computes_nothing_needs_every_partition_served() -> None:
    problem = _problem(uplink_mbps=50)
    hosted_p0_only = (ServerProfile("a:1", 1e12, hosts=frozenset({"cnn@large/p0", "cnn@small/p0"})),)
    thin = replace(problem, device=replace(problem.device, computes=False), servers=hosted_p0_only)
    with pytest.raises(Unavailable, match="runs no partition"):
        ChainSolver().solve(thin)


def test_per_partition_device_calibration_moves_work_off_a_slow_partition() -> None:
    """FLOPs say a partition is cheap on the device; the device measures it far slower: the planner stops
    putting it there (and the cost model charges exactly the measured factor)."""
    problem = _problem(uplink_mbps=0.13)  # a slow link: most work stays on the device
    plan = CpSatSolver().solve(problem)
    heavy = plan.device_partitions
    assert heavy
    variant = problem.variants[0]
    from splitinfer.planner.cost import DEVICE, compute_terms

    index = next(k for k, p in enumerate(variant.partitions) if p.name == heavy[0])
    plain = compute_terms(problem, variant, index, DEVICE)
    key = f"{variant.model}@{variant.variant}/{heavy[0]}"
    calibration = Calibration()
    for _ in range(3):
        calibration.observe_device_partition("d1", key, observed_ms=plain * 1e3 * 1000, predicted_ms=plain * 1e3)
    calibrated = replace(problem, device=calibration.device("d1", problem.device))
    assert compute_terms(calibrated, variant, index, DEVICE) == pytest.approx(plain * 1000)
    assert heavy[0] not in CpSatSolver().solve(calibrated).device_partitions
    assert heavy[0] not in ChainSolver().solve(calibrated).device_partitions


@pytest.mark.parametrize("solver", [ChainSolver(), CpSatSolver(), GreedySolver()])
def test_replicas_that_differ_only_in_their_reported_queue_stay_in_every_step(solver) -> None:  # type: ignore[no-untyped-def]
    """A queue reported at planning time picks where the plan puts its partitions, but it must not drop an
    equally able replica from the route: the plan serves every request of its device for minutes, and the
    balancer chooses a replica per request from the load it sees then. Every step lists the same replicas,
    so a request that enters one of them runs there whole; a server far slower is only a fallback."""
    thin = replace(_problem(uplink_mbps=50).device, computes=False)
    servers = (
        ServerProfile("busy:1", 5e10, queue_ms=40.0),  # 8 requests in flight when the device asked
        ServerProfile("idle:1", 5e10),
        ServerProfile("slow:1", 1e10),  # 5x slower: not the same capacity
    )
    problem = replace(_problem(), device=thin, servers=servers)
    plan = solver.solve(problem)
    assert plan.route is not None and len(plan.route.steps) == 4
    assert {p.where for p in plan.placements} == {"idle:1"}  # the queue still steers the planned place
    for step in plan.route.steps:
        assert list(step.addresses) == ["idle:1", "busy:1"]  # the chosen one first, then its equal
        assert list(step.fallback_addresses) == ["slow:1"]


def test_a_replica_slower_on_one_tiny_partition_still_takes_the_whole_request() -> None:
    """Identical nodes on a busy host calibrate a little apart per partition (contention, not capacity). A
    replica whose time is over the factor on one small partition but about the same in all still serves
    every step: a request entering it then runs there whole rather than hopping back for that one step."""
    thin = replace(_problem(uplink_mbps=50).device, computes=False)
    # p3 (0.6 GFLOP of 2.6) measured 1.6x slower on b: over 1.25x for p3 alone, 1.14x over the four.
    slower_p3 = ServerProfile("b:1", 5e10, partition_factors=(("cnn@large/p3", 1.6),))
    problem = replace(_problem(), device=thin, servers=(ServerProfile("a:1", 5e10), slower_p3))
    plan = ChainSolver().solve(problem)
    assert plan.route is not None and {p.where for p in plan.placements} == {"a:1"}
    assert [list(step.addresses) for step in plan.route.steps] == [["a:1", "b:1"]] * 4


def test_a_server_half_as_fast_is_a_fallback_not_an_equal_replica() -> None:
    """However many partitions a server's share has, a replica half as fast is not "about as fast": the
    slack of the comparison is one for the set, not one per partition."""
    thin = replace(_problem(uplink_mbps=50).device, computes=False)
    problem = replace(_problem(), device=thin, servers=(ServerProfile("fast:1", 5e11), ServerProfile("slow:1", 2.5e11)))
    plan = ChainSolver().solve(problem)
    assert plan.route is not None and {p.where for p in plan.placements} == {"fast:1"}
    assert len(plan.route.steps) > 1
    for step in plan.route.steps:
        assert list(step.addresses) == ["fast:1"]
        assert "slow:1" in step.fallback_addresses


def test_a_server_to_server_hop_costs_more_than_its_wire() -> None:
    """A hop between servers pays the next node's request path (``server_hop_ms``): a plan does not split
    a request over two servers to save less than that in compute."""
    thin = replace(_problem(uplink_mbps=50).device, computes=False)
    # b runs the last partition 2.2 ms faster (p3, 0.6 GFLOP at 5e10: 12 ms on a, 9.8 ms on b); its input
    # t2 (200 KB) costs 1.6 ms of wire and 0.2 ms of link latency, and the hop 0.9 ms more.
    b = ServerProfile("b:1", 5e10, hosts=frozenset({"cnn@large/p3"}), partition_factors=(("cnn@large/p3", 0.82),))
    problem = replace(_problem(), device=thin, servers=(ServerProfile("a:1", 5e10), b))
    assert {p.where for p in ChainSolver().solve(problem).placements} == {"a:1"}
    free_hops = replace(problem, server_hop_ms=0.0)  # the wire alone is cheaper than the 2.2 ms saved
    assert {p.where for p in ChainSolver().solve(free_hops).placements} == {"a:1", "b:1"}
