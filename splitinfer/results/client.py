"""Where a front-end writes results: the store in-process, or a shared ResultStoreService."""

from __future__ import annotations

import asyncio
from typing import Protocol

import grpc

from splitinfer.errors import NotFound
from splitinfer.results.store import ResultStore
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.channel import open_channel
from splitinfer.transport.status import error_from_rpc
from splitinfer.v1 import result_store_pb2, result_store_pb2_grpc

__all__ = ["LocalResults", "RemoteResults", "Results", "stored_result"]


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


class LocalResults:
    reads_in_process = True  # the store's reads never wait for its writer (WAL, a reader per thread)

    def __init__(self, store: ResultStore) -> None:
        self.store = store

    def put(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        return self.store.put_or_get(result)

    async def put_async(self, result: result_store_pb2.StoredResult) -> tuple[bool, result_store_pb2.StoredResult]:
        return await self.store.commits.put(result)

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
