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
