"""The ResultStoreService servicer.

Results belong to their caller. With authentication on (``tokens``), a caller holding only the device role
reads and lists only its own results (its token's name is its caller); cluster components and operators
name the caller they ask about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import grpc

from splitinfer.results.detections import DetectionQuery
from splitinfer.results.store import ResultQuery, ResultStore
from splitinfer.security.auth import ADMIN, CLUSTER, TokenTable
from splitinfer.security.interceptor import identify
from splitinfer.transport.status import map_errors
from splitinfer.v1 import result_store_pb2, result_store_pb2_grpc

__all__ = ["ResultStoreServicer"]

T = TypeVar("T")


async def _blocking(function: Callable[[], T]) -> T:
    """SQLite (with a synchronous fsync per write) off the event loop, on the loop's bounded executor."""
    return await asyncio.get_running_loop().run_in_executor(None, function)


class ResultStoreServicer(result_store_pb2_grpc.ResultStoreServiceServicer):
    """For ``grpc.aio`` servers; every store call runs off the loop: puts through a group commit, the
    others on the loop's default (bounded) executor."""

    def __init__(self, store: ResultStore, tokens: TokenTable | None = None) -> None:
        self._store = store
        self._tokens = tokens

    def _own_caller(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller a device-role identity is confined to; None when the caller may ask about anyone."""
        if self._tokens is None:
            return None
        identity = identify(self._tokens, context)  # type: ignore[arg-type]
        if identity is None or identity.roles & {CLUSTER, ADMIN}:
            return None
        return identity.name

    @map_errors()
    async def PutResult(
        self, request: result_store_pb2.PutResultRequest, context: grpc.aio.ServicerContext
    ) -> result_store_pb2.PutResultResponse:
        # From every front-end, with the store's other puts: those that arrive while one group commits go in the next.
        stored, kept = await self._store.commits.put(request.result)
        return result_store_pb2.PutResultResponse(stored=stored, result=kept)

    @map_errors()
    async def GetResult(
        self, request: result_store_pb2.GetResultRequest, context: grpc.aio.ServicerContext
    ) -> result_store_pb2.GetResultResponse:
        caller = self._own_caller(context)
        if caller is None:
            caller = request.caller or None  # none named: the newest result under that id
        found = await _blocking(lambda: self._store.get(request.request_id, caller))
        return result_store_pb2.GetResultResponse(result=found)

    @map_errors()
    async def QueryResults(
        self, request: result_store_pb2.QueryResultsRequest, context: grpc.aio.ServicerContext
    ) -> result_store_pb2.QueryResultsResponse:
        caller = self._own_caller(context)
        query = ResultQuery(
            device_id=request.device_id,
            model=request.model,
            since_unix_ms=request.since_unix_ms,
            until_unix_ms=request.until_unix_ms,
            page_size=request.page_size,
            page_token=request.page_token,
            caller=request.caller if caller is None else caller,
        )
        results, token = await _blocking(lambda: self._store.query(query))
        return result_store_pb2.QueryResultsResponse(results=results, next_page_token=token)

    @map_errors()
    async def QueryDetections(
        self, request: result_store_pb2.QueryDetectionsRequest, context: grpc.aio.ServicerContext
    ) -> result_store_pb2.QueryDetectionsResponse:
        caller = self._own_caller(context)
        query = DetectionQuery(
            label=request.label,
            min_score=request.min_score,
            since_unix_ms=request.since_unix_ms,
            until_unix_ms=request.until_unix_ms,
            model=request.model,
            device_id=request.device_id,
            caller=request.caller if caller is None else caller,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        records, token = await _blocking(lambda: self._store.detections.query(query))
        return result_store_pb2.QueryDetectionsResponse(detections=records, next_page_token=token)
