"""The Result Store: durable, idempotent, queryable with stable paging, bounded by retention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from splitinfer.errors import InvalidArgument, NotFound
from splitinfer.results import ResultQuery, ResultStore
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
