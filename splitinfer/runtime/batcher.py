"""Dynamic batching of one partition's requests, as Triton's dynamic batcher does.

Requests queued for a partition are concatenated along dimension 0, run once, and the outputs are split back
so each caller gets exactly its own rows. A batch starts as soon as the worker is free and either
``max_batch_size`` rows are queued or the oldest queued request has waited ``max_queue_delay_ms`` since it
arrived (Triton's rule: the delay counts from arrival, so requests that queued while the previous batch
ran go at once, and under load batches form without any added wait; ``0`` never waits). A request whose
deadline passes while it waits is answered DeadlineExceeded and left out of the batch; a failure of the
batched run is every member's failure (inputs are checked per request before they join, so one bad request
cannot spoil a batch).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from splitinfer.errors import DeadlineExceeded, InvalidArgument, Unavailable

__all__ = ["BatchStats", "DynamicBatcher"]

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass
class BatchStats:
    """What the batcher did: runs, requests served, rows per run."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    largest_batch_rows: int = 0
    largest_batch_requests: int = 0
    expired: int = 0
    #: Number of runs by the number of requests they served.
    requests_per_batch: dict[int, int] = field(default_factory=dict)


class _Pending:
    __slots__ = ("arrived", "deadline", "feeds", "future", "rows")

    def __init__(self, feeds: Feeds, rows: int, arrived: float, deadline: float | None) -> None:
        self.feeds = feeds
        self.rows = rows
        self.arrived = arrived
        self.deadline = deadline
        self.future: Future[Outputs] = Future()


class DynamicBatcher:
    """One worker thread per batched partition; :meth:`submit` blocks the caller until its rows are back."""

    def __init__(
        self,
        run: Callable[[Feeds], Outputs],
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        name: str = "partition",
    ) -> None:
        if max_batch_size < 1:
            raise InvalidArgument(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise InvalidArgument(f"max_queue_delay_ms must be >= 0, got {max_queue_delay_ms}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1e3
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, feeds: Feeds, timeout_s: float | None = None) -> Outputs:
        """Queues the request and waits for its rows."""
        return self.submit_future(feeds, timeout_s).result()

    def submit_future(self, feeds: Feeds, timeout_s: float | None = None) -> Future[Outputs]:
        """Queues the request; the future holds its rows (or its error). A cancelled future's request is
        left out of the batch it would have joined."""
        rows = {int(a.shape[0]) for a in feeds.values()}
        if len(rows) != 1:
            raise InvalidArgument(f"batched inputs disagree on dimension 0: {sorted(rows)}")
        (count,) = rows
        if count > self.max_batch_size:
            raise InvalidArgument(f"a request of {count} rows exceeds the batch limit of {self.max_batch_size}")
        now = time.monotonic()
        pending = _Pending(feeds, count, now, None if timeout_s is None else now + timeout_s)
        with self._cond:
            if self._closed:
                raise Unavailable("the partition is being unloaded")
            self._queue.append(pending)
            self._queued_rows += count
            # The worker waits for a first request, or for a full batch: wake it only then.
            if len(self._queue) == 1 or self._queued_rows >= self.max_batch_size:
                self._cond.notify()
        return pending.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _take_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed and not self._queue:
                return None
            while (
                self._queue
                and self._queued_rows < self.max_batch_size
                and not self._closed
                and (left := self._queue[0].arrived + self.max_queue_delay_s - time.monotonic()) > 0
            ):
                self._cond.wait(left)
            batch: list[_Pending] = []
            rows = 0
            while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
                item = self._queue.popleft()
                batch.append(item)
                rows += item.rows
            self._queued_rows -= rows
            return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            now = time.monotonic()
            live = []
            for item in batch:
                if not item.future.set_running_or_notify_cancel():
                    continue  # the caller gave up
                if item.deadline is not None and item.deadline <= now:
                    item.future.set_exception(
                        DeadlineExceeded("deadline passed while the request waited for its batch")
                    )
                    self.stats.expired += 1
                else:
                    live.append(item)
            if live:
                self._execute(live)

    def _execute(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                results = [self._run(batch[0].feeds)]
            else:
                names = list(batch[0].feeds)
                stacked = {n: np.concatenate([p.feeds[n] for p in batch]) for n in names}
                outputs = self._run(stacked)
                bounds = np.cumsum([0, *(p.rows for p in batch)])
                results = [
                    {n: np.ascontiguousarray(v[bounds[i] : bounds[i + 1]]) for n, v in outputs.items()}
                    for i in range(len(batch))
                ]
        except Exception as exc:  # every member fails with the batch's error
            for item in batch:
                item.future.set_exception(exc)
            return
        rows = sum(p.rows for p in batch)
        stats = self.stats
        stats.batches += 1
        stats.requests += len(batch)
        stats.rows += rows
        stats.largest_batch_rows = max(stats.largest_batch_rows, rows)
        stats.largest_batch_requests = max(stats.largest_batch_requests, len(batch))
        stats.requests_per_batch[len(batch)] = stats.requests_per_batch.get(len(batch), 0) + 1
        for item, result in zip(batch, results, strict=True):
            item.future.set_result(result)
