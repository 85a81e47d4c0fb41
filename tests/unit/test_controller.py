"""The division controller's pure parts and its protocol, without network: activity windows on a fake clock,
the policy's thresholds and hysteresis, the rollout protocol against recording node operations, and the
whole controller over a real pool with a model whose best head cut differs between two device classes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from splitinfer.controller import ActivityWindow, Basis, ClassActivity, ControllerConfig, DivisionPolicy, share_shift
from splitinfer.controller.activity import MAX_CLASSES, OTHER_CLASS
from splitinfer.controller.controller import DivisionController, read_status, versioned
from splitinfer.controller.rollout import Rollout, RolloutPhase
from splitinfer.demo_redivision import Funnel
from splitinfer.divider import ServerCapacity, divide
from splitinfer.errors import Unavailable
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.pool.sources import get_source, put_source
from splitinfer.program import export_program
from splitinfer.registry import ServerRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- activity ------------------------------------------------------------------------------------------------


def test_activity_rates_medians_and_expiry() -> None:
    clock = Clock()
    window = ActivityWindow(10.0, clock=clock)
    for i in range(20):
        window.record("phone", 1e9 + i, 10.0, 1 << 30)
        clock.now += 0.5
    window.record("camera", 1e8, float("nan"), -5)  # careless figures are clamped, not trusted
    snap = window.snapshot()
    assert set(snap) == {"camera", "phone"}
    assert snap["phone"].requests == 20 and snap["phone"].requests_per_s == pytest.approx(2.0)
    assert snap["phone"].compute_flops == pytest.approx(1e9 + 9.5)
    assert snap["camera"].uplink_mbps == 0.0 and snap["camera"].memory_bytes == 0
    clock.now += 10.5
    assert window.snapshot() == {}, "everything left the window"


def test_activity_bounds_the_classes_a_device_can_name() -> None:
    window = ActivityWindow(60.0, max_samples_per_class=3, clock=Clock())
    for i in range(MAX_CLASSES + 10):
        window.record(f"class-{i}" + "x" * 1000, 1e9, 1.0)
    for _ in range(5):
        window.record("class-0" + "x" * 1000, 1e9, 1.0)
    snap = window.snapshot()
    assert len(snap) == MAX_CLASSES + 1 and snap[OTHER_CLASS].requests == 3  # capped samples per class
    assert all(len(name) <= 64 for name in snap)
    with pytest.raises(ValueError):
        ActivityWindow(0.0)
    with pytest.raises(ValueError):
        ActivityWindow(math.inf)


def test_share_shift_is_a_distance_between_mixes() -> None:
    assert share_shift({"a": 1.0}, {"a": 5.0}) == 0.0
    assert share_shift({"a": 1.0}, {"b": 1.0}) == 1.0
    assert share_shift({"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 1.0}) == pytest.approx(0.25)
    assert share_shift({}, {}) == 0.0 and share_shift({}, {"a": 1.0}) == 1.0


# --- policy --------------------------------------------------------------------------------------------------

SERVERS = {"s1": 1e10, "s2": 1e10}


def _mix(phone_share: float) -> Basis:
    return Basis({"phone": phone_share, "camera": 1 - phone_share}, SERVERS)


def test_policy_triggers_on_mix_servers_and_capacity() -> None:
    policy = DivisionPolicy(ControllerConfig(models=("m@fp32",), shift_threshold=0.3, min_interval_s=0))
    assert policy.trigger(_mix(0.0), 0.0) is not None  # no basis yet
    policy.adopted(_mix(0.0), 0.0)
    assert policy.trigger(_mix(0.2), 1.0) is None
    trigger = policy.trigger(_mix(0.4), 1.0)
    assert trigger is not None and "mix moved by 0.40" in trigger.reason
    trigger = policy.trigger(Basis(_mix(0.0).mix, {"s1": 1e10}), 1.0)
    assert trigger is not None and "left ['s2']" in trigger.reason
    trigger = policy.trigger(Basis(_mix(0.0).mix, {"s1": 1e10, "s2": 3e10}), 1.0)
    assert trigger is not None and "compute" in trigger.reason
    urgent = policy.trigger(_mix(0.0), 1.0, current_served=False)
    assert urgent is not None and urgent.urgent


def test_policy_margin_and_dwell() -> None:
    policy = DivisionPolicy(ControllerConfig(models=("m@fp32",), adopt_margin=0.1, min_interval_s=30))
    assert policy.adopt(100.0, 95.0) == (False, pytest.approx(0.05))
    assert policy.adopt(100.0, 80.0) == (True, pytest.approx(0.2))
    assert policy.adopt(math.inf, 80.0) == (True, 1.0)
    assert policy.adopt(100.0, math.inf) == (False, 0.0)
    policy.adopted(_mix(0.0), 0.0)
    assert policy.trigger(_mix(1.0), 10.0) is None, "within the dwell time"
    assert policy.trigger(_mix(1.0), 31.0) is not None
    assert policy.trigger(_mix(1.0), 10.0, current_served=False) is not None, "unserved beats the dwell"


def test_policy_does_not_flap_when_the_mix_oscillates_around_the_threshold() -> None:
    """The mix swings between just under and just over the threshold from the basis; a candidate that would
    always "gain" is adopted at most once, and a rejected one is not re-evaluated on every swing."""
    config = ControllerConfig(models=("m@fp32",), shift_threshold=0.3, min_interval_s=0)
    policy = DivisionPolicy(config, basis=_mix(0.0))
    adoptions = evaluations = 0
    for tick in range(200):
        observed = _mix(0.28 if tick % 2 else 0.33)
        if policy.trigger(observed, float(tick)) is not None:
            evaluations += 1
            policy.adopted(observed, float(tick))
            adoptions += 1
    assert adoptions == 1 and evaluations == 1
    rejecting = DivisionPolicy(config, basis=_mix(0.0))
    evaluations = 0
    for tick in range(200):
        observed = _mix(0.28 if tick % 2 else 0.33)
        if rejecting.trigger(observed, float(tick)) is not None:
            evaluations += 1
            rejecting.rejected(observed)
    assert evaluations == 1


def test_config_is_validated_where_it_is_read() -> None:
    for bad in ({"interval_s": 0}, {"shift_threshold": 1.5}, {"drain_s": -1}, {"replicas": 0},
                {"models": ("no-variant",)}, {"window_s": math.nan}):  # fmt: skip
        with pytest.raises(ValueError):
            ControllerConfig(**bad)  # type: ignore[arg-type]


# --- rollout -------------------------------------------------------------------------------------------------


@dataclass
class Nodes:
    """Node operations that record what a rollout did, and fail where told to."""

    hosted: dict[str, set[str]] = field(default_factory=dict)
    queue: dict[str, dict[str, int]] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def load(self, address: str, source: str, key: str) -> None:
        if address in self.refuse:
            raise Unavailable(f"{address} is out of memory")
        self.hosted.setdefault(address, set()).add(key)
        self.log.append(("load", address, key))

    def unload(self, address: str, key: str) -> None:
        self.hosted.get(address, set()).discard(key)
        self.log.append(("unload", address, key))

    def queued(self, address: str) -> Mapping[str, int]:
        return self.queue.get(address, {})


def _rollout(switched: list[int]) -> Rollout:
    return Rollout(
        model="m", variant="fp32", old_version=1, new_version=2,
        loads={"m@fp32/v2-p0": ("pool://x/sha/v2-p0", ("a", "b")), "m@fp32/v2-p1": ("pool://x/sha/v2-p1", ("b",))},
        old_hosts={"m@fp32/p0": ("a",), "m@fp32/p1": ("b",)},
        switch=lambda: switched.append(1), drain_s=30.0, drain_timeout_s=60.0,
    )  # fmt: skip


def test_rollout_loads_everything_before_switching_and_unloads_only_after_the_drain() -> None:
    nodes, switched = Nodes(queue={"a": {"m@fp32/p0": 2}}), []
    rollout = _rollout(switched)
    assert rollout.advance(nodes, 0.0) == RolloutPhase.DRAINING
    assert switched == [1] and [op for op, _, _ in nodes.log] == ["load"] * 3
    assert rollout.advance(nodes, 29.0) == RolloutPhase.DRAINING
    assert rollout.advance(nodes, 31.0) == RolloutPhase.DRAINING, "a request is still queued on p0"
    nodes.queue = {}
    assert rollout.advance(nodes, 32.0) == RolloutPhase.DONE
    assert sorted(k for op, _, k in nodes.log if op == "unload") == ["m@fp32/p0", "m@fp32/p1"]
    assert switched == [1] and "loaded 3/3, unloaded 2/2" in rollout.progress()


def test_rollout_drain_gives_up_on_a_stuck_queue_after_its_timeout() -> None:
    nodes = Nodes(queue={"a": {"m@fp32/p0": 1}})
    rollout = _rollout([])
    rollout.advance(nodes, 0.0)
    assert rollout.advance(nodes, 89.0) == RolloutPhase.DRAINING
    assert rollout.advance(nodes, 91.0) == RolloutPhase.DONE


def test_a_node_refusing_a_load_rolls_the_rollout_back_without_switching() -> None:
    nodes, switched = Nodes(refuse={"b"}), []
    rollout = _rollout(switched)
    assert rollout.advance(nodes, 0.0) == RolloutPhase.ROLLED_BACK
    assert switched == [] and all(not keys for keys in nodes.hosted.values())
    assert "node b refused" in rollout.error and "out of memory" in rollout.error
    assert not any(k.startswith("m@fp32/p") for _, _, k in nodes.log), "the old division was never touched"


# --- the whole controller ------------------------------------------------------------------------------------


CAMERA = ClassActivity("camera", 5.0, 100, compute_flops=1e8, uplink_mbps=100.0, memory_bytes=1 << 30)
PHONE = ClassActivity("phone", 5.0, 100, compute_flops=1.5e8, uplink_mbps=2.0, memory_bytes=1 << 30)


@dataclass
class Cluster:
    """Two nodes as the registry would show them, kept in step with the loads the controller makes."""

    nodes: Nodes
    alive: set[str] = field(default_factory=lambda: {"s1", "s2"})

    def records(self) -> dict[str, ServerRecord]:
        return {
            a: ServerRecord(a, tuple(sorted(self.nodes.hosted.get(a, set()))), compute_flops=1e10,
                            memory_available_bytes=1 << 34)
            for a in sorted(self.alive)
        }  # fmt: skip


def _pool(tmp_path: Path) -> tuple[ModelPool, Nodes]:
    torch.manual_seed(0)
    program = export_program(Funnel(), (torch.randn(1, 3, 64, 64),))
    pool = ModelPool(tmp_path / "pool")
    servers = [ServerCapacity("s1", 1e10, 1 << 34), ServerCapacity("s2", 1e10, 1 << 34)]
    division = divide(ModelGraph.build(program), "funnel", servers)  # sized for the camera: no head cut
    pool.add_division(division, variant="fp32", division_name="default", accuracy=0.9, onnx=False)
    put_source(pool, "funnel", "fp32", program)
    nodes = Nodes(hosted={p.host: {f"funnel@fp32/{p.name}"} for p in division.partitions})
    return pool, nodes


def _controller(pool: ModelPool, cluster: Cluster, mix: dict[str, ClassActivity], clock: Clock) -> DivisionController:
    config = ControllerConfig(models=("funnel@fp32",), min_interval_s=60, drain_s=5, onnx=False)
    return DivisionController(
        config, pool, servers=cluster.records, activity=lambda: mix, nodes=cluster.nodes, pool_address="pool:1",
        clock=clock, wall_clock=clock,
    )  # fmt: skip


def test_source_programs_round_trip_and_versioned_names(tmp_path: Path) -> None:
    pool, _ = _pool(tmp_path)
    program = get_source(pool, "funnel", "fp32")
    assert program.input_names == ["x"]
    division = pool.division(pool.resolve("funnel", "fp32", "default"))
    renamed = versioned(divide(ModelGraph.build(program), "funnel", [ServerCapacity("s", 1e10, 1 << 34)]), 7)
    assert [p.name for p in renamed.partitions] == ["v7-p0"] and len(division.partitions) == 2


def test_controller_re_divides_for_a_new_population_rolls_out_and_does_not_flap(tmp_path: Path) -> None:
    pool, nodes = _pool(tmp_path)
    cluster, clock = Cluster(nodes), Clock()
    mix = {"camera": CAMERA}
    controller = _controller(pool, cluster, mix, clock)
    controller.step()  # the first evaluation: the camera is what the division was sized for
    state = controller.states["funnel@fp32"]
    assert state.version == 1 and state.last_evaluation.startswith("kept the current division"), state
    first_sha = pool.resolve("funnel", "fp32", "default")

    mix.clear()
    mix["phone"] = PHONE  # the population shifts to devices with a slow uplink
    clock.now += 1
    controller.step()
    assert state.version == 2, state.last_evaluation
    assert "request mix moved by 1.00" in state.reason and state.predicted_gain >= 0.1
    new_sha = pool.resolve("funnel", "fp32", "default")
    assert new_sha != first_sha
    new = pool.division(new_sha)
    assert all(p.name.startswith("v2-") for p in new.partitions)
    hosted = {k for keys in nodes.hosted.values() for k in keys}
    assert {f"funnel@fp32/{p.name}" for p in new.partitions} <= hosted
    assert "funnel@fp32/p0" in hosted, "old partitions stay until drained"
    # The phone's head cut (after the squeeze, a 4 KB tensor) is now a partition boundary.
    assert any(o.nbytes == 4096 for p in new.partitions[:-1] for o in p.outputs)
    clock.now += 6
    controller.step()
    hosted = {k for keys in nodes.hosted.values() for k in keys}
    assert not any(k.startswith("funnel@fp32/p") for k in hosted), "old partitions unloaded after the drain"
    assert "done" in state.rollout

    # The mix oscillates around the threshold (the camera's share swings 0 <-> 0.35): within the dwell time
    # nothing is even evaluated; after it, one evaluation (the candidate equals the division in force, as the
    # camera needs no head cut) and no re-division, however long the swinging goes on.
    evaluations = state.evaluations
    for tick in range(120):
        clock.now += 1
        mix.clear()
        if tick % 2:
            mix["phone"] = PHONE
        else:
            mix.update(phone=PHONE, camera=ClassActivity("camera", 2.7, 54, 1e8, 100.0, 1 << 30))
        controller.step()
        if tick == 40:
            assert state.evaluations == evaluations, "the dwell time holds"
    assert state.version == 2 and state.evaluations == evaluations + 1, state.last_evaluation

    status = read_status(pool.root)
    assert status is not None and status.models[0].version == 2
    assert any("division v2" in line for line in status.lines())


def test_a_node_leaving_re_divides_onto_the_remaining_nodes_at_once(tmp_path: Path) -> None:
    pool, nodes = _pool(tmp_path)
    cluster, clock = Cluster(nodes), Clock()
    controller = _controller(pool, cluster, {"camera": CAMERA}, clock)
    controller.step()
    cluster.alive.discard("s2")  # s2 leaves: its partition has no host
    clock.now += 1
    controller.step()
    state = controller.states["funnel@fp32"]
    assert state.version == 2 and "not served" in state.reason, state.last_evaluation
    new = pool.division(pool.resolve("funnel", "fp32", "default"))
    assert {p.host for p in new.partitions} == {"s1"}
    assert all(f"funnel@fp32/{p.name}" in nodes.hosted["s1"] for p in new.partitions)


def test_a_refused_load_keeps_the_old_division(tmp_path: Path) -> None:
    pool, nodes = _pool(tmp_path)
    cluster, clock = Cluster(nodes), Clock()
    mix = {"camera": CAMERA}
    controller = _controller(pool, cluster, mix, clock)
    controller.step()
    before = pool.resolve("funnel", "fp32", "default")
    nodes.refuse = {"s1"}
    mix.clear()
    mix["phone"] = PHONE
    clock.now += 1
    controller.step()
    state = controller.states["funnel@fp32"]
    assert state.version == 1 and "rolled back" in state.last_evaluation
    assert pool.resolve("funnel", "fp32", "default") == before
    assert {k for keys in nodes.hosted.values() for k in keys} == {"funnel@fp32/p0", "funnel@fp32/p1"}


def test_the_daemon_refuses_to_start_with_nothing_to_manage(capsys: pytest.CaptureFixture[str]) -> None:
    from splitinfer.controller.__main__ import main

    code = main(["--pool-dir", "/nonexistent", "--pool-address", "127.0.0.1:1", "--registry", "etcd://127.0.0.1:1"])
    assert code == 2 and "--model" in capsys.readouterr().err
