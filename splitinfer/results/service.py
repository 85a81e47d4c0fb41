"""The ResultStoreService servicer."""

from __future__ import annotations

import grpc

from splitinfer.errors import SplitInferError
from splitinfer.results.store import ResultQuery, ResultStore
from splitinfer.transport.status import abort
from splitinfer.v1 import result_store_pb2, result_store_pb2_grpc

__all__ = ["ResultStoreServicer"]


class ResultStoreServicer(result_store_pb2_grpc.ResultStoreServiceServicer):
    def __init__(self, store: ResultStore) -> None:
        self._store = store

    def PutResult(
        self, request: result_store_pb2.PutResultRequest, context: grpc.ServicerContext
    ) -> result_store_pb2.PutResultResponse:
        try:
            return result_store_pb2.PutResultResponse(stored=self._store.put(request.result))
        except SplitInferError as exc:
            abort(context, exc)

    def GetResult(
        self, request: result_store_pb2.GetResultRequest, context: grpc.ServicerContext
    ) -> result_store_pb2.GetResultResponse:
        try:
            return result_store_pb2.GetResultResponse(result=self._store.get(request.request_id))
        except SplitInferError as exc:
            abort(context, exc)

    def QueryResults(
        self, request: result_store_pb2.QueryResultsRequest, context: grpc.ServicerContext
    ) -> result_store_pb2.QueryResultsResponse:
        try:
            results, token = self._store.query(
                ResultQuery(
                    device_id=request.device_id,
                    model=request.model,
                    since_unix_ms=request.since_unix_ms,
                    until_unix_ms=request.until_unix_ms,
                    page_size=request.page_size,
                    page_token=request.page_token,
                )
            )
        except SplitInferError as exc:
            abort(context, exc)
        return result_store_pb2.QueryResultsResponse(results=results, next_page_token=token)
