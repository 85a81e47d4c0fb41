"""Dynamic batching: concurrent requests run as one batch, each caller gets its own rows; deadlines,
cancellation and errors stay per request."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from splitinfer.divider import partition_at
from splitinfer.errors import DeadlineExceeded, InvalidArgument
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.runtime import RuntimeOptions
from splitinfer.runtime.batcher import DynamicBatcher
from splitinfer.zoo import build


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows(tmp_path: Path) -> None:
    model, example = build("tiny_cnn")
    program = export_program(model, example)
    graph = ModelGraph.build(program, example)
    pool = ModelPool(tmp_path)
    sha = pool.add_division(partition_at(graph, "tiny_cnn", []), variant="fp32", division_name="default")
    options = RuntimeOptions(max_batch_size=8, max_queue_delay_ms=2000)
    part = pool.load_partition(sha, "p0", options)
    assert part.batches and part.runtime == "onnxruntime"
    name = part.inputs[0].name
    inputs = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    inputs.append(torch.randn(4, 3, 32, 32))  # a caller may send several rows: 8 rows fill the batch
    futures = [part.submit({name: x}, timeout_s=30) for x in inputs]
    results = [f.result(timeout=30) for f in futures]
    stats = part.batch_stats
    assert stats is not None
    assert stats.batches == 1 and stats.requests == 5 and stats.largest_batch_rows == 8
    assert stats.requests_per_batch == {5: 1}
    with torch.no_grad():
        for x, got in zip(inputs, results, strict=True):
            (out,) = got.values()
            assert out.shape[0] == x.shape[0]
            torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    # A request that does not fit is refused before it queues; a wrong shape too, without spoiling others.
    with pytest.raises(InvalidArgument, match="exceeds the batch limit"):
        part.submit({name: torch.randn(9, 3, 32, 32)})
    with pytest.raises(InvalidArgument):
        part.submit({name: torch.randn(1, 3, 16, 16)})
    part.close()


def test_deadline_cancellation_and_errors_stay_per_request() -> None:
    calls: list[int] = []

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        calls.append(int(x.shape[0]))
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2}

    batcher = DynamicBatcher(run, max_batch_size=4, max_queue_delay_ms=300)
    late = batcher.submit_future({"x": np.ones((1, 2))}, timeout_s=0.0)
    cancelled = batcher.submit_future({"x": np.full((1, 2), 5.0)})
    assert cancelled.cancel()
    ok = batcher.submit_future({"x": np.full((1, 2), 3.0)}, timeout_s=10)
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=5)
    np.testing.assert_array_equal(ok.result(timeout=5)["y"], np.full((1, 2), 6.0))
    assert calls == [1]  # the expired and the cancelled request never ran
    assert batcher.stats.expired == 1
    # A failing batch fails each of its members with the error; the batcher keeps serving.
    bad = [batcher.submit_future({"x": np.full((1, 2), v)}) for v in (1.0, -1.0)]
    for f in bad:
        with pytest.raises(ValueError, match="negative"):
            f.result(timeout=5)
    np.testing.assert_array_equal(batcher.submit({"x": np.zeros((2, 2))}, timeout_s=5)["y"], np.zeros((2, 2)))
    batcher.close()


def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    batcher = DynamicBatcher(lambda f: {"y": f["x"] + 1}, max_batch_size=2, max_queue_delay_ms=10_000)
    results: list[np.ndarray] = []
    start = time.monotonic()
    threads = [
        threading.Thread(target=lambda v=v: results.append(batcher.submit({"x": np.full((1,), v)})["y"]))
        for v in (1.0, 2.0)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert time.monotonic() - start < 5  # well under the 10 s delay: the batch was full
    assert sorted(float(r[0]) for r in results) == [2.0, 3.0]
    assert batcher.stats.batches == 1
    batcher.close()
    with pytest.raises(Exception, match="unloaded"):
        batcher.submit({"x": np.ones((1,))})


def test_the_queue_delay_counts_from_arrival_so_requests_queued_during_a_run_go_at_once() -> None:
    """Triton's rule: a request that already waited the delay while the previous batch ran starts as soon
    as the worker is free (the old rule restarted the delay when the worker came back: >= 0.6 s here)."""
    started, release = threading.Event(), threading.Event()

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not started.is_set():
            started.set()
            release.wait(10)
        return {"y": feeds["x"] + 1}

    batcher = DynamicBatcher(run, max_batch_size=4, max_queue_delay_ms=600)
    first = batcher.submit_future({"x": np.zeros((1,))}, timeout_s=30)
    assert started.wait(10)  # the first request ran alone after its delay, and its run is blocked
    second = batcher.submit_future({"x": np.ones((1,))}, timeout_s=30)
    time.sleep(0.7)  # the second request has now waited longer than the delay
    freed = time.monotonic()
    release.set()
    np.testing.assert_array_equal(second.result(timeout=10)["y"], [2.0])
    assert time.monotonic() - freed < 0.5
    np.testing.assert_array_equal(first.result(timeout=10)["y"], [1.0])
    assert batcher.stats.requests_per_batch == {1: 2}
    batcher.close()


def test_zero_delay_runs_what_is_queued_without_waiting() -> None:
    batcher = DynamicBatcher(lambda f: {"y": f["x"] * 3}, max_batch_size=8, max_queue_delay_ms=0)
    start = time.monotonic()
    np.testing.assert_array_equal(batcher.submit({"x": np.ones((2,))}, timeout_s=10)["y"], [3.0, 3.0])
    assert time.monotonic() - start < 5
    assert batcher.stats.batches == 1 and batcher.stats.rows == 2
    batcher.close()
