"""The ResultStoreService servicer.

Results belong to their caller. With authentication on (``tokens``), a caller holding only the device role
reads and lists only its own results (its token's name is its caller); cluster components and operators
name the caller they ask about.
"""

from __future__ import annotations

import grpc

from splitinfer.errors import SplitInferError
from splitinfer.results.detections import DetectionQuery
from splitinfer.results.store import ResultQuery, ResultStore
from splitinfer.security.auth import ADMIN, CLUSTER, TokenTable
from splitinfer.security.interceptor import identify
from splitinfer.transport.status import abort
from splitinfer.v1 import result_store_pb2, result_store_pb2_grpc

__all__ = ["ResultStoreServicer"]


class ResultStoreServicer(result_store_pb2_grpc.ResultStoreServiceServicer):
    def __init__(self, store: ResultStore, tokens: TokenTable | None = None) -> None:
        self._store = store
        self._tokens = tokens

    def _own_caller(self, context: grpc.ServicerContext) -> str | None:
        """The caller a device-role identity is confined to; None when the caller may ask about anyone."""
        if self._tokens is None:
            return None
        identity = identify(self._tokens, context)
        if identity is None or identity.roles & {CLUSTER, ADMIN}:
            return None
        return identity.name

    def PutResult(
        self, request: result_store_pb2.PutResultRequest, context: grpc.ServicerContext
    ) -> result_store_pb2.PutResultResponse:
        try:
            stored, kept = self._store.put_or_get(request.result)
            return result_store_pb2.PutResultResponse(stored=stored, result=kept)
        except SplitInferError as exc:
            abort(context, exc)

    def GetResult(
        self, request: result_store_pb2.GetResultRequest, context: grpc.ServicerContext
    ) -> result_store_pb2.GetResultResponse:
        try:
            caller = self._own_caller(context)
            if caller is None:
                caller = request.caller or None  # none named: the newest result under that id
            return result_store_pb2.GetResultResponse(result=self._store.get(request.request_id, caller))
        except SplitInferError as exc:
            abort(context, exc)

    def QueryResults(
        self, request: result_store_pb2.QueryResultsRequest, context: grpc.ServicerContext
    ) -> result_store_pb2.QueryResultsResponse:
        try:
            caller = self._own_caller(context)
            results, token = self._store.query(
                ResultQuery(
                    device_id=request.device_id,
                    model=request.model,
                    since_unix_ms=request.since_unix_ms,
                    until_unix_ms=request.until_unix_ms,
                    page_size=request.page_size,
                    page_token=request.page_token,
                    caller=request.caller if caller is None else caller,
                )
            )
        except SplitInferError as exc:
            abort(context, exc)
        return result_store_pb2.QueryResultsResponse(results=results, next_page_token=token)

    def QueryDetections(
        self, request: result_store_pb2.QueryDetectionsRequest, context: grpc.ServicerContext
    ) -> result_store_pb2.QueryDetectionsResponse:
        try:
            caller = self._own_caller(context)
            records, token = self._store.detections.query(
                DetectionQuery(
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
            )
        except SplitInferError as exc:
            abort(context, exc)
        return result_store_pb2.QueryDetectionsResponse(detections=records, next_page_token=token)
