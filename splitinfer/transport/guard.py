"""A server interceptor that answers INVALID_ARGUMENT, not INTERNAL, to requests that are not valid protobuf.

grpc-python reports a message its deserializer cannot parse as INTERNAL ("Exception deserializing
request"), which tells a client nothing about its own mistake. This wraps every method's deserializer so a
malformed message reaches the handler as a marker, and the call ends with INVALID_ARGUMENT naming the
method and the parse error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from splitinfer.transport.handlers import Behaviour, rewrap

__all__ = ["MalformedRequestGuard"]


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Malformed(f"{type(exc).__name__}: {exc}")

    return parse


class MalformedRequestGuard(grpc.ServerInterceptor):
    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:  # fmt: skip
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def refuse(context: grpc.ServicerContext, marker: _Malformed) -> None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request: {marker.error}")

        def single(behaviour: Behaviour) -> Behaviour:
            def checked(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    refuse(context, request)
                return behaviour(request, context)

            return checked

        def streamed(behaviour: Behaviour) -> Behaviour:
            def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                def each() -> Iterator[Any]:
                    for request in requests:
                        if isinstance(request, _Malformed):
                            refuse(context, request)
                        yield request

                return behaviour(each(), context)

            return checked

        return rewrap(
            handler,
            unary_request=single,
            stream_request=streamed,
            request_deserializer=_tolerant(handler.request_deserializer),
        )
