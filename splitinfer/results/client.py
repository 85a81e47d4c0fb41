"""Where a front-end writes results: the store in-process, or a shared ResultStoreService."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import grpc

from splitinfer.errors import NotFound
from splitinfer.results.store import ResultStore
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.channel import open_channel
from splitinfer.transport.status import error_from_rpc
from splitinfer.v1 import result_store_pb2, result_store_pb2_grpc

__all__ = ["GroupCommit", "LocalResults", "RemoteResults", "Results", "stored_result"]

_Answer = tuple[bool, result_store_pb2.StoredResult]


class Results(Protocol):
    #: ``get`` answers from this process without waiting on I/O or a lock a put holds (an event loop may
    #: call it itself); False: call it from a worker thread.
    reads_in_process: bool

    def put(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        """Stores ``result`` unless its (caller, request id) is taken; whether it was stored, and the result
        stored under that key. FailedPrecondition when the stored one answered other inputs."""
        ...

    async def put_async(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        """:meth:`put` for a caller on an event loop: the loop never blocks on the store."""
        ...

    def get(self, request_id: str, caller: str) -> result_store_pb2.StoredResult: ...


def stored_result(results: Results | None, caller: str, request_id: str) -> result_store_pb2.StoredResult | None:
    """The result ``caller`` already has under ``request_id`` (a retry), or None."""
    if results is None:
        return None
    try:
        return results.get(request_id, caller)
    except NotFound:
        return None


class GroupCommit:
    """Puts from event loops, committed in groups by one writer thread (:meth:`ResultStore.put_many`).

    A put waits for the commit that holds it, as it would for its own: it is durable when answered. While
    the writer commits one group, the puts that arrive meanwhile wait and go together in the next, so the
    store does one transaction (and one WAL sync) and the loop one wake-up per group, not per result: at one
    request at a time a group is one result, as before; at 64 the groups hold the requests that finished
    during one commit. Nothing waits on a timer to fill a group.
    """

    def __init__(self, store: ResultStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pending: list[tuple[result_store_pb2.StoredResult, asyncio.Future[_Answer]]] = []
        self._writing = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="results-commit")
        #: Groups committed and results in them (tests and diagnostics).
        self.groups = 0
        self.results = 0

    async def put(self, result: result_store_pb2.StoredResult) -> _Answer:
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._pending.append((result, future))
            start, self._writing = not self._writing, True
        if start:
            self._writer.submit(self._write)
        return await future  # a caller cancelled now still has its result stored (it is in the group)

    def _write(self) -> None:
        """Commits the waiting puts, group after group, until none is left (on the writer thread)."""
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
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[_Answer], _Answer | BaseException]]]
            by_loop = {}
            for (_, future), answer in zip(group, answers, strict=True):
                by_loop.setdefault(future.get_loop(), []).append((future, answer))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits for these any more
                    loop.call_soon_threadsafe(_settle, settled)

    def close(self) -> None:
        self._writer.shutdown(wait=True)


def _settle(settled: list[tuple[asyncio.Future[_Answer], _Answer | BaseException]]) -> None:
    for future, answer in settled:
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


class LocalResults:
    reads_in_process = True  # the store's reads never wait for its writer (WAL, a reader per thread)

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self._group = GroupCommit(store)

    def put(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        return self.store.put_or_get(result)

    async def put_async(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        return await self._group.put(result)

    def get(self, request_id: str, caller: str) -> result_store_pb2.StoredResult:
        return self.store.get(request_id, caller)


class RemoteResults:
    reads_in_process = False  # a blocking call to the ResultStoreService

    def __init__(self, address: str, timeout_s: float = 10.0, security: ClientSecurity | None = None) -> None:
        self.address = address
        self._timeout_s = timeout_s
        self._stub = result_store_pb2_grpc.ResultStoreServiceStub(open_channel(address, security=security))

    def put(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        try:
            request = result_store_pb2.PutResultRequest(result=result)
            response: result_store_pb2.PutResultResponse = self._stub.PutResult(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"result store {self.address}") from None
        return bool(response.stored), response.result

    async def put_async(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        return await asyncio.get_running_loop().run_in_executor(None, self.put, result)

    def get(self, request_id: str, caller: str) -> result_store_pb2.StoredResult:
        try:
            request = result_store_pb2.GetResultRequest(request_id=request_id, caller=caller)
            response: result_store_pb2.GetResultResponse = self._stub.GetResult(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"result store {self.address}") from None
        return response.result
