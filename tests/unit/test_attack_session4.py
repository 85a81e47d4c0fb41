"""Pure-core findings of the attack on this session's zero-copy decode and group commit (issue #13).

``input_effects`` must count every input a program's outputs may BE (not only views declared in schemas),
and the result store's group commit must answer each put of a group on its own. Strict xfails name bugs.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import torch

from splitinfer.errors import InvalidArgument
from splitinfer.program import Node, Program, Ref, ValueSpec
from splitinfer.results.commit import GroupCommit
from splitinfer.results.store import ResultStore
from splitinfer.runtime.aliasing import input_effects
from splitinfer.v1 import result_store_pb2

F32 = torch.float32


def _spec(name: str) -> ValueSpec:
    return ValueSpec(name, F32, (4,))


def _program(*nodes: Node, outputs: tuple[str, ...] = ("y",)) -> Program:
    return Program(inputs=(_spec("x"),), outputs=tuple(_spec(o) for o in outputs), nodes=nodes)


def _node(name: str, op: str, *args: object) -> Node:
    return Node(name, op, tuple(args), {}, (_spec(name),))


def test_an_output_that_is_the_input_itself_is_returned() -> None:
    assert input_effects(_program(outputs=("x",))).returns == {"x"}
    alias = _program(_node("y", "aten.alias.default", Ref("x")))
    assert input_effects(alias).returns == {"x"} and not input_effects(alias).read_only


def test_a_write_through_a_kwarg_or_an_unfitting_call_is_counted() -> None:
    by_kwarg = _program(
        Node("a", "aten.add_.Tensor", (), {"self": Ref("x"), "other": Ref("x")}, (_spec("a"),)),
        _node("y", "aten.mul.Tensor", Ref("a"), 2),
    )
    assert input_effects(by_kwarg).writes == {"x"}
    unknown_kwarg = _program(Node("y", "aten.mul.Tensor", (Ref("x"),), {"nonsense": 1}, (_spec("y"),)))
    assert not input_effects(unknown_kwarg).read_only


def test_an_operator_off_the_allow_list_counts_as_writing_and_returning() -> None:
    effects = input_effects(_program(_node("y", "aten.copy_.default", Ref("x"), Ref("x"))))
    assert effects.writes == {"x"} and effects.returns == {"x"}


def test_eval_dropout_really_returns_its_input_itself() -> None:
    """The fact the test below rests on: ATen's dropout with train=False (or p=0) returns the input tensor."""
    x = torch.randn(4)
    assert torch.ops.aten.dropout.default(x, 0.5, False) is x
    assert torch.ops.aten.dropout.default(x, 0.0, True) is x


def test_an_eval_dropout_of_the_input_returns_the_input() -> None:
    effects = input_effects(_program(_node("y", "aten.dropout.default", Ref("x"), 0.5, False)))
    assert effects.returns == {"x"} and not effects.read_only


def _result(request_id: str, digest: str = "d") -> result_store_pb2.StoredResult:
    return result_store_pb2.StoredResult(request_id=request_id, caller="c", input_digest=digest, model="m")


def test_a_group_answers_each_put_on_its_own(tmp_path: Path) -> None:
    """One group (the writer is held on the store's lock while it forms) of good puts, a malformed id, the
    same id twice with the same inputs and once with others: the good ones are stored, the malformed one
    and the reused id are refused alone, the duplicate is answered as a retry; nothing hangs."""
    store = ResultStore(tmp_path / "results.db")
    group = GroupCommit(store)

    async def main() -> list[object]:
        with store._lock:  # the first put's commit waits here: the others join the next group
            first = asyncio.ensure_future(group.put(_result("first")))
            await asyncio.sleep(0.05)
            rest = [
                group.put(_result("good-1")),
                group.put(_result("bad id \n")),
                group.put(_result("twice")),
                group.put(_result("twice")),
                group.put(_result("twice", digest="other")),
                group.put(_result("good-2")),
            ]
            tasks = [asyncio.ensure_future(p) for p in rest]
            await asyncio.sleep(0.05)
        return await asyncio.wait_for(asyncio.gather(first, *tasks, return_exceptions=True), 10)

    try:
        answers = asyncio.run(main())
        assert group.groups == 2 and group.results == 7
        first, good_1, bad, twice_a, twice_b, reused, good_2 = answers
        for stored in (first, good_1, good_2, twice_a):
            assert stored[0] is True  # type: ignore[index]
        assert isinstance(bad, InvalidArgument)
        assert twice_b[0] is False and twice_b[1].request_id == "twice"  # type: ignore[index]
        assert type(reused).__name__ == "FailedPrecondition"
        assert store.count() == 4
    finally:
        group.close()
        store.close()


def test_a_failing_commit_fails_only_its_group_and_the_next_group_commits(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    group = GroupCommit(store)

    async def main() -> tuple[list[Any], list[Any]]:
        with store._lock:
            store._db.execute("PRAGMA query_only = ON")
        failed = await asyncio.wait_for(
            asyncio.gather(*(group.put(_result(f"ro-{i}")) for i in range(5)), return_exceptions=True), 10
        )
        with store._lock:
            store._db.execute("PRAGMA query_only = OFF")
        ok = await asyncio.wait_for(
            asyncio.gather(*(group.put(_result(f"ro-{i}")) for i in range(5)), return_exceptions=True), 10
        )
        return failed, ok

    try:
        failed, ok = asyncio.run(main())
        assert all(isinstance(a, BaseException) for a in failed), failed
        assert all(a[0] is True for a in ok), ok
        assert store.count() == 5
    finally:
        group.close()
        store.close()


def test_puts_from_a_loop_that_closed_do_not_stop_the_writer(tmp_path: Path) -> None:
    """A caller's loop ends while its put is committing (a front-end shutting down): the result is stored,
    the writer survives, and a put from another loop afterwards is answered."""
    store = ResultStore(tmp_path / "results.db")
    group = GroupCommit(store)
    try:
        held = threading.Event()

        async def abandon() -> None:
            task = asyncio.ensure_future(group.put(_result("abandoned")))
            await asyncio.sleep(0.05)
            held.set()
            task.cancel()

        with store._lock:
            asyncio.run(abandon())  # the loop closes with the put in the writer's group
            assert held.is_set()
        assert asyncio.run(asyncio.wait_for(group.put(_result("after")), 10))[0] is True
        assert store.get("abandoned", "c").request_id == "abandoned"  # accepted, so stored
    finally:
        group.close()
        store.close()
