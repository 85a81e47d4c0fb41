"""Group commit: puts from event loops stored by one writer thread, a transaction per group of results."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from splitinfer.errors import Unavailable
from splitinfer.v1 import result_store_pb2

if TYPE_CHECKING:  # the store owns its group commit (ResultStore.commits)
    from splitinfer.results.store import ResultStore

__all__ = ["GroupCommit"]

log = logging.getLogger("splitinfer.results")

_Answer = tuple[bool, result_store_pb2.StoredResult]


class GroupCommit:
    """Puts from event loops, committed in groups by one writer thread (:meth:`ResultStore.put_many`).

    A put waits for the commit that holds it, as it would for its own: it is durable when answered. While
    the writer commits one group, the puts that arrive meanwhile wait and go together in the next, so the
    store does one transaction (and one WAL sync) for the group's results (a result's detections, when it
    has boxes, in a transaction of their own) and the loop one wake-up per group, not per result: at one
    request at a time a group is one result, as before; at 64 the groups hold the requests that finished
    during one commit. Nothing waits on a timer to fill a group.
    """

    def __init__(self, store: ResultStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pending: list[tuple[result_store_pb2.StoredResult, asyncio.Future[_Answer]]] = []
        self._writing = False
        self._closed = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="results-commit")
        #: Groups committed and results in them (tests and diagnostics).
        self.groups = 0
        self.results = 0

    async def put(self, result: result_store_pb2.StoredResult) -> _Answer:
        """Stores ``result`` with the group it arrives in; answers once that group is committed. Unavailable
        once the group commit is closed (its store is closing)."""
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        entry = (result, future)
        with self._lock:
            if self._closed:
                raise Unavailable("the result store is closed")
            self._pending.append(entry)
            start, self._writing = not self._writing, True
        if start:
            try:
                self._writer.submit(self._write)
            except BaseException:
                with self._lock:
                    self._writing = False
                    if entry in self._pending:
                        self._pending.remove(entry)
                raise Unavailable("the result store is closed") from None
        return await future  # a caller cancelled now still has its result stored (it is in the group)

    def _write(self) -> None:
        """Commits the waiting puts, group after group, until none is left (on the writer thread). Should
        anything but the store fail here, every waiting put is answered with that error and the next put
        starts a writer again: a put never waits for a writer that is gone."""
        group: list[tuple[result_store_pb2.StoredResult, asyncio.Future[_Answer]]] = []
        try:
            while True:
                with self._lock:
                    group, self._pending = self._pending, []
                    if not group:
                        self._writing = False
                        return
                answers: Sequence[_Answer | BaseException]
                try:
                    answers = self._store.put_many([result for result, _ in group])
                except BaseException as exc:  # the database failed: every put of the group with it
                    answers = [exc] * len(group)
                self.groups += 1
                self.results += len(group)
                _answer(zip((future for _, future in group), answers, strict=True))
                group = []
        except BaseException as exc:
            log.exception("the result store's group commit failed; its waiting puts get the error")
            with self._lock:
                left, self._pending, self._writing = [*group, *self._pending], [], False
            _answer((future, exc) for _, future in left)

    def close(self) -> None:
        """Refuses new puts (Unavailable) and returns once every put accepted so far is committed."""
        with self._lock:
            self._closed = True
        self._writer.shutdown(wait=True)


def _answer(answers: Iterable[tuple[asyncio.Future[_Answer], _Answer | BaseException]]) -> None:
    """Hands each answer to its caller's event loop (a loop that closed meanwhile has nobody waiting)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[_Answer], _Answer | BaseException]]] = {}
    for future, answer in answers:
        by_loop.setdefault(future.get_loop(), []).append((future, answer))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits for these any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[_Answer], _Answer | BaseException]]) -> None:
    for future, answer in settled:
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)
