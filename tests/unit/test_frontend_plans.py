"""Server-owned plans: ids bound to their caller and device, expiring, bounded; the device's share has no
route."""

from __future__ import annotations

import pytest

from splitinfer.errors import FailedPrecondition, InvalidArgument
from splitinfer.frontend.plans import PlanBook, entry_tensors
from splitinfer.planner.plan import Placement, Plan
from splitinfer.v1 import route_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _route() -> route_pb2.Route:
    first = route_pb2.RouteStep(
        partition=route_pb2.PartitionRef(model="m", variant="fp32", partition="p1"),
        addresses=["10.0.0.1:1"],
        input_names=["head_out", "x"],
        outputs=[route_pb2.TensorRoute(tensor_name="mid", consumer_steps=[1])],
    )
    second = route_pb2.RouteStep(
        partition=route_pb2.PartitionRef(model="m", variant="fp32", partition="p2"),
        addresses=["10.0.0.2:1"],
        input_names=["mid", "x"],
        outputs=[route_pb2.TensorRoute(tensor_name="out", deliver=True)],
    )
    return route_pb2.Route(steps=[first, second])


def _plan() -> Plan:
    placements = (
        Placement("p0", "device", 1.0),
        Placement("p1", "10.0.0.1:1", 2.0),
        Placement("p2", "10.0.0.2:1", 2.0),
    )
    return Plan("m", "fp32", placements, (), 5.0, 0.1, 0.9, "test", "test", route=_route())


def test_entry_tensors_are_what_no_step_produces() -> None:
    assert entry_tensors(_route()) == ("head_out", "x")


def test_an_issued_plan_is_for_its_caller_and_device_only() -> None:
    book = PlanBook(ttl_s=60)
    issued = book.issue(_plan(), "alice", "phone-1")
    assert book.get(issued.plan_id, "alice", "phone-1") is issued
    for caller, device in (("bob", "phone-1"), ("alice", "phone-2"), ("bob", "phone-2")):
        with pytest.raises(FailedPrecondition, match="new plan") as refused:
            book.get(issued.plan_id, caller, device)
        assert "alice" not in str(refused.value)  # another caller learns nothing about whose it is
    with pytest.raises(FailedPrecondition):
        book.get("never-issued", "alice", "phone-1")
    with pytest.raises(InvalidArgument):
        book.get("", "alice", "phone-1")
    with pytest.raises(InvalidArgument) as long:
        book.get("x" * (1 << 20), "alice", "phone-1")
    assert len(str(long.value)) < 200


def test_plans_expire() -> None:
    clock = Clock()
    book = PlanBook(ttl_s=10, clock=clock, wall_clock=lambda: 50.0)
    issued = book.issue(_plan(), "alice", "phone-1")
    assert issued.expires_unix_ms == 60_000
    clock.now += 9.9
    assert book.get(issued.plan_id, "alice", "phone-1") is issued
    clock.now += 0.2
    with pytest.raises(FailedPrecondition, match="expired"):
        book.get(issued.plan_id, "alice", "phone-1")
    assert len(book) == 0  # expired plans are dropped, not kept


def test_the_book_is_bounded() -> None:
    book = PlanBook(ttl_s=60, max_plans=3)
    ids = [book.issue(_plan(), "alice", "phone-1").plan_id for _ in range(5)]
    assert len(book) == 3
    with pytest.raises(FailedPrecondition):
        book.get(ids[0], "alice", "phone-1")
    assert book.get(ids[-1], "alice", "phone-1").plan_id == ids[-1]
    unkept = book.issue(_plan(), "alice", "phone-1", keep=False)
    with pytest.raises(FailedPrecondition):
        book.get(unkept.plan_id, "alice", "phone-1")


def test_the_device_share_carries_no_route() -> None:
    issued = PlanBook().issue(_plan(), "alice", "phone-1")
    share = issued.device_share()
    assert not share.HasField("route")
    assert share.plan_id == issued.plan_id and list(share.entry_tensors) == ["head_out", "x"]
    assert share.expires_unix_ms > 0 and [p.on_device for p in share.placements] == [True, False, False]
    assert issued.plan.route is not None  # the front-end keeps it


def test_one_caller_asking_in_a_loop_forgets_only_its_own_plans() -> None:
    book = PlanBook(ttl_s=60, max_plans=1000, max_per_caller=4)
    theirs = book.issue(_plan(), "bob", "phone-2")
    mine = [book.issue(_plan(), "alice", "phone-1").plan_id for _ in range(50)]
    assert book.get(theirs.plan_id, "bob", "phone-2") is theirs  # alice's flood did not push bob's plan out
    assert len(book) == 5
    for plan_id in mine[:-4]:
        with pytest.raises(FailedPrecondition):
            book.get(plan_id, "alice", "phone-1")
    assert all(book.get(plan_id, "alice", "phone-1") for plan_id in mine[-4:])


def test_expiry_keeps_the_per_caller_index_small() -> None:
    clock = Clock()
    book = PlanBook(ttl_s=1, clock=clock)
    for i in range(20):
        book.issue(_plan(), f"caller-{i}", "d")
    clock.now += 2
    book.issue(_plan(), "late", "d")
    assert len(book) == 1 and list(book._by_caller) == ["late"]
