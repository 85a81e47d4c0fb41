"""Rebuilding a gRPC method handler with wrapped behaviour: what every server interceptor here needs.

A handler has one of four behaviours (unary or streamed request, unary or streamed response); an
interceptor wraps it by request kind and keeps the (de)serializers, optionally replacing the deserializer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["Behaviour", "rewrap"]

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Deserializer = Callable[[bytes], Any] | None


def rewrap(
    handler: grpc.RpcMethodHandler,
    *,
    unary_request: Callable[[Behaviour], Behaviour],
    stream_request: Callable[[Behaviour], Behaviour],
    request_deserializer: Deserializer | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped by ``unary_request`` or ``stream_request`` (by the kind of
    request it takes), and ``request_deserializer`` instead of its own when given."""
    parse = request_deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_request(handler.unary_unary), parse, serialize)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(unary_request(handler.unary_stream), parse, serialize)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(stream_request(handler.stream_unary), parse, serialize)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream_request(handler.stream_stream), parse, serialize)
    return handler
