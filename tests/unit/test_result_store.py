"""The Result Store: durable, idempotent, queryable with stable paging, bounded by retention."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from pathlib import Path

import pytest

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.results import ResultQuery, ResultStore
from splitinfer.results.store import MAX_PAGE_BYTES
from splitinfer.v1 import result_store_pb2


def _result(i: int, device: str = "d1", model: str = "m", created: int | None = None) -> result_store_pb2.StoredResult:
    return result_store_pb2.StoredResult(
        request_id=f"r{i:04d}", device_id=device, model=model, created_unix_ms=created or 1_000 + i,
        labels=[f"label{i}"], latency_ms=float(i),
    )  # fmt: skip


def test_put_get_and_idempotence(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    assert store.put(_result(1))
    duplicate = _result(1)
    duplicate.labels[:] = ["changed"]
    assert not store.put(duplicate)  # a retry is not stored twice, and the first is kept
    assert list(store.get("r0001").labels) == ["label1"]
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(InvalidArgument):
        store.put(result_store_pb2.StoredResult())
    store.close()
    reopened = ResultStore(tmp_path / "results.db")  # durable across restarts
    assert reopened.get("r0001").latency_ms == 1.0 and reopened.count() == 1


def test_query_filters_and_pages_newest_first(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    for i in range(25):
        store.put(_result(i, device="d1" if i % 2 else "d2", model="a" if i < 20 else "b"))
    seen, token = [], ""
    while True:
        page, token = store.query(ResultQuery(device_id="d1", page_size=4, page_token=token))
        seen += [r.request_id for r in page]
        if not token:
            break
    assert seen == [f"r{i:04d}" for i in range(23, 0, -2)]
    by_model, _ = store.query(ResultQuery(model="b"))
    assert [r.request_id for r in by_model] == ["r0024", "r0023", "r0022", "r0021", "r0020"]
    window, _ = store.query(ResultQuery(since_unix_ms=1_005, until_unix_ms=1_008))
    assert [r.request_id for r in window] == ["r0007", "r0006", "r0005"]
    with pytest.raises(InvalidArgument, match="page_token"):
        store.query(ResultQuery(page_token="garbage!"))


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db", max_rows=10)
    for i in range(15):
        store.put(_result(i))
    assert store.count() == 10
    with pytest.raises(NotFound):
        store.get("r0004")
    assert store.get("r0005")
    aged = ResultStore(tmp_path / "aged.db", max_age_s=3600)
    aged.put(_result(1, created=1))  # from 1970: dropped at the next insert
    aged.put(_result(2, created=int(time.time() * 1000)))
    assert aged.count() == 1 and aged.get("r0002")


def test_retention_counts_without_scanning_and_sees_other_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention keeps its row count in memory (no COUNT(*) per put), starts from the file's rows when
    opened, and recounts every RECOUNT_EVERY puts so rows another process wrote are pruned too."""
    from splitinfer.results import store as store_module

    monkeypatch.setattr(store_module, "RECOUNT_EVERY", 4)
    path = tmp_path / "results.db"
    first = ResultStore(path, max_rows=100)
    for i in range(8):
        first.put(_result(i))
    first.close()
    reopened = ResultStore(path, max_rows=10)  # knows the 8 rows already there
    other = ResultStore(path, max_rows=1000)  # another writer of the same file
    for i in range(8, 14):
        other.put(_result(i))
    reopened.put(_result(14))  # its count says 9: nothing pruned yet
    assert reopened.count() == 15
    for i in range(15, 18):
        reopened.put(_result(i))  # the 4th put recounts: 18 rows, the oldest 8 go
    assert reopened.count() == 10
    with pytest.raises(NotFound):
        reopened.get("r0007")
    assert reopened.get("r0008") and reopened.get("r0017")
    for i in range(18, 30):
        reopened.put(_result(i))
    assert reopened.count() == 10 and reopened.get("r0020")


def test_results_belong_to_their_caller(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    mine = _result(1, device="d1")
    mine.caller, mine.input_digest = "alice", "a" * 64
    theirs = _result(1, device="d2")
    theirs.caller, theirs.input_digest = "bob", "b" * 64
    theirs.labels[:] = ["bob's"]
    assert store.put(mine) and store.put(theirs)  # the same id from two callers: two requests
    assert list(store.get("r0001", "alice").labels) == ["label1"]
    assert list(store.get("r0001", "bob").labels) == ["bob's"]
    with pytest.raises(NotFound):
        store.get("r0001", "carol")
    retry = _result(1)
    retry.caller, retry.input_digest = "alice", "a" * 64
    stored, kept = store.put_or_get(retry)  # a retry: the stored result answers
    assert not stored and list(kept.labels) == ["label1"]
    reused = _result(1)
    reused.caller, reused.input_digest = "alice", "c" * 64
    with pytest.raises(FailedPrecondition, match="other inputs"):
        store.put_or_get(reused)
    only_bob, _ = store.query(ResultQuery(caller="bob"))
    assert [r.caller for r in only_bob] == ["bob"]


def test_ids_are_bounded_when_written(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    with pytest.raises(InvalidArgument, match="at most 128") as refused:
        store.put(result_store_pb2.StoredResult(request_id="x" * (4 << 20)))
    assert len(str(refused.value)) < 200  # the message does not echo the id
    with pytest.raises(InvalidArgument):
        store.put(result_store_pb2.StoredResult(request_id="ok", caller="c" * 129))
    with pytest.raises(InvalidArgument, match="control"):
        store.put(result_store_pb2.StoredResult(request_id="line\nbreak"))
    assert store.count() == 0


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b'[1e400, "c", "r"]').decode(),  # a float that overflows to inf
        base64.urlsafe_b64encode(b'[1000000000000000000000000000000, "c", "r"]').decode(),  # 10^30
        base64.urlsafe_b64encode(b'[-1, "c", "r"]').decode(),
        base64.urlsafe_b64encode(b'[NaN, "c", "r"]').decode(),
        base64.urlsafe_b64encode(b'[true, "c", "r"]').decode(),
        base64.urlsafe_b64encode(b'[5, 7, "r"]').decode(),
        base64.urlsafe_b64encode(b'[5, "r"]').decode(),  # the format before callers
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        base64.urlsafe_b64encode(json.dumps([5, "c", "r" * 200]).encode()).decode(),
        "garbage!",
        "%%%%",
        "A" * 5000,
    ],
)
def test_page_tokens_are_validated_strictly(tmp_path: Path, token: str) -> None:
    store = ResultStore(tmp_path / "results.db")
    store.put(_result(1))
    with pytest.raises(InvalidArgument, match="page_token") as refused:
        store.query(ResultQuery(page_token=token))
    assert len(str(refused.value)) < 200


def test_a_huge_result_never_breaks_a_page(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    for i in range(4):
        result = _result(i)
        result.outputs.add(name="out", payload=bytes(((MAX_PAGE_BYTES // 2) if i < 3 else 0) + 10))
        store.put(result)
    huge = _result(9)
    huge.outputs.add(name="out", payload=bytes(MAX_PAGE_BYTES + 1))
    store.put(huge)
    pages, token, sizes = [], "", []
    while True:
        page, token = store.query(ResultQuery(page_token=token))
        pages.append([r.request_id for r in page])
        sizes.append(sum(r.ByteSize() for r in page))
        if not token:
            break
    assert [r for p in pages for r in p] == ["r0009", "r0003", "r0002", "r0001", "r0000"]  # nothing lost
    assert max(sizes) <= MAX_PAGE_BYTES + 1000  # every page fits a default client's 4 MiB
    first, _ = store.query(ResultQuery(page_size=1))
    assert first[0].outputs_omitted and not first[0].outputs
    assert len(store.get("r0009").outputs[0].payload) == MAX_PAGE_BYTES + 1  # GetResult has it whole


def test_a_database_from_before_callers_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(str(path))
    db.executescript(
        "CREATE TABLE results (request_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, model TEXT NOT NULL,"
        " created_unix_ms INTEGER NOT NULL, body BLOB NOT NULL);"
        "CREATE INDEX results_by_time ON results (created_unix_ms DESC, request_id DESC);"
    )
    old = _result(1, device="d7")
    db.execute("INSERT INTO results VALUES (?, ?, ?, ?, ?)", ("r0001", "d7", "m", 1001, old.SerializeToString()))
    db.commit()
    db.close()
    store = ResultStore(path)
    assert store.get("r0001", "d7").device_id == "d7"  # now its device's result
    assert store.put(_result(2)) and store.count() == 2


def test_a_read_never_waits_for_the_writer(tmp_path: Path) -> None:
    """get reads through its thread's own connection: a put holding the writer's lock (committing, fsync)
    does not hold up a lookup, which sees every committed result (an event loop calls it itself)."""
    import threading

    store = ResultStore(tmp_path / "results.db")
    store.put(_result(1))
    looked_up: list[str] = []
    with store._lock:  # a put in progress
        reader = threading.Thread(target=lambda: looked_up.append(store.get("r0001").request_id))
        reader.start()
        reader.join(timeout=5)
        assert looked_up == ["r0001"]
    store.put(_result(2))
    assert store.get("r0002").request_id == "r0002"  # this thread's reader sees the new commit
    store.close()


def test_put_many_answers_each_result_on_its_own_in_one_transaction(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    store.put(result_store_pb2.StoredResult(request_id="old", input_digest="a", labels=["first"]))
    again = result_store_pb2.StoredResult(request_id="new", input_digest="b", labels=["second try"])
    answers = store.put_many([
        result_store_pb2.StoredResult(request_id="new", input_digest="b", labels=["first try"]),
        result_store_pb2.StoredResult(request_id="old", input_digest="a", labels=["retry"]),  # a retry
        result_store_pb2.StoredResult(request_id="old", input_digest="z"),  # the id reused for other inputs
        result_store_pb2.StoredResult(request_id=""),  # no id: refused, the others still stored
        again,  # the same key twice in one group: the first is stored, the second answered like a retry
    ])  # fmt: skip
    assert answers[0][0] is True and list(answers[0][1].labels) == ["first try"]  # type: ignore[index]
    assert answers[1][0] is False and list(answers[1][1].labels) == ["first"]  # type: ignore[index]
    assert isinstance(answers[2], FailedPrecondition) and isinstance(answers[3], InvalidArgument)
    assert answers[4][0] is False and list(answers[4][1].labels) == ["first try"]  # type: ignore[index]
    assert store.count() == 2
    store.close()
    assert ResultStore(tmp_path / "results.db").get("new").labels == ["first try"]  # committed


def test_group_commit_stores_puts_that_arrive_during_a_commit_in_the_next_one(tmp_path: Path) -> None:
    """While one group commits, the puts arriving meanwhile wait and go as one group: 1 + 31 puts in two
    commits, each answered with its own outcome once durable."""
    import asyncio
    import threading

    from splitinfer.results.commit import GroupCommit

    store = ResultStore(tmp_path / "results.db")
    gate, entered = threading.Event(), threading.Event()
    sizes: list[int] = []
    put_many = store.put_many

    def slow_put_many(results):  # type: ignore[no-untyped-def]
        sizes.append(len(results))
        entered.set()
        gate.wait(5)
        return put_many(results)

    store.put_many = slow_put_many  # type: ignore[method-assign]
    group = GroupCommit(store)

    async def main() -> list[tuple[bool, result_store_pb2.StoredResult] | BaseException]:
        first = asyncio.ensure_future(group.put(_result(0)))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)  # the first group is committing
        rest = [asyncio.ensure_future(group.put(_result(i % 30 + 1))) for i in range(31)]  # r0001 twice
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    answers = asyncio.run(main())
    group.close()
    assert sizes == [1, 31] and group.groups == 2 and group.results == 32
    assert [a[0] for a in answers] == [True] * 31 + [False]  # type: ignore[index]
    assert store.count() == 31


def _boxed(i: int) -> result_store_pb2.StoredResult:
    result = _result(i)
    result.detections.add(x_min=0, y_min=0, x_max=1, y_max=1, label="cat", score=0.9)
    return result


def _boxes(store: ResultStore, request_id: str) -> int:
    rows = store.detections._db.execute("SELECT COUNT(*) FROM detections WHERE request_id = ?", (request_id,))
    return int(rows.fetchone()[0])


def test_a_failed_detection_write_answers_its_result_alone_and_the_retry_writes_the_boxes(tmp_path: Path) -> None:
    """A group's results are committed together, their boxes after: one result's boxes failing to store
    answers that result with UNAVAILABLE (its caller retries), the others stored and answered as stored; the
    retry finds the result stored and writes the boxes it lacks."""
    from splitinfer.errors import Unavailable

    store = ResultStore(tmp_path / "results.db")
    add = store.detections.add

    def failing_add(result: result_store_pb2.StoredResult) -> int:
        if result.request_id == "r0002":
            raise sqlite3.OperationalError("disk I/O error")
        return add(result)

    store.detections.add = failing_add  # type: ignore[method-assign]
    answers = store.put_many([_boxed(1), _boxed(2), _boxed(3)])
    assert isinstance(answers[1], Unavailable)
    assert [a[0] for a in (answers[0], answers[2])] == [True, True]  # type: ignore[index]
    assert store.count() == 3 and (_boxes(store, "r0001"), _boxes(store, "r0002"), _boxes(store, "r0003")) == (1, 0, 1)
    store.detections.add = add  # type: ignore[method-assign]
    (retry,) = store.put_many([_boxed(2)])
    assert retry[0] is False and _boxes(store, "r0002") == 1  # type: ignore[index]
    store.close()


def test_a_retry_whose_row_retention_deletes_later_in_its_group_is_answered(tmp_path: Path) -> None:
    """A retried id is read when its insert is ignored, before a later insert of the same group runs
    retention (max_age_s) and deletes it: the retry is answered with the result it had, not a failure of the
    whole group."""
    path = tmp_path / "results.db"
    old = ResultStore(path)
    assert old.put(_result(1, created=int(time.time() * 1000) - 60_000))
    old.close()
    store = ResultStore(path, max_age_s=30)
    answers = store.put_many([_result(1), _result(2, created=int(time.time() * 1000))])
    assert answers[0][0] is False and answers[0][1].request_id == "r0001"  # type: ignore[index]
    assert answers[1][0] is True  # type: ignore[index]
    assert store.count() == 1  # r0001 was past retention
    store.close()


def test_a_closed_group_commit_refuses_puts_and_commits_what_it_accepted(tmp_path: Path) -> None:
    """Closing the store commits every put its group commit accepted; later puts are UNAVAILABLE at once,
    never left waiting for a writer that is gone."""
    import asyncio

    from splitinfer.errors import Unavailable

    store = ResultStore(tmp_path / "results.db")

    async def main() -> None:
        accepted = asyncio.ensure_future(store.commits.put(_result(1)))
        await asyncio.sleep(0)  # the put is in the group
        await asyncio.get_running_loop().run_in_executor(None, store.commits.close)
        assert (await accepted)[0] is True
        for i in (2, 3):
            with pytest.raises(Unavailable, match="closed"):
                await asyncio.wait_for(store.commits.put(_result(i)), 2)

    asyncio.run(main())
    assert store.count() == 1
    store.close()


def test_a_group_commit_whose_writer_fails_answers_every_waiting_put_and_starts_again(tmp_path: Path) -> None:
    """Anything failing on the writer thread outside the store (here: counting the group) answers the puts
    waiting with the error, and the next put starts a writer again."""
    import asyncio

    from splitinfer.results.commit import GroupCommit

    store = ResultStore(tmp_path / "results.db")
    group = GroupCommit(store)

    class Broken(int):
        def __add__(self, other: object) -> int:
            raise RuntimeError("counting failed")

    group.groups = Broken(0)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="counting failed"):
            await asyncio.wait_for(group.put(_result(1)), 5)
        group.groups = 0
        assert (await asyncio.wait_for(group.put(_result(2)), 5))[0] is True

    asyncio.run(main())
    group.close()
    store.close()
