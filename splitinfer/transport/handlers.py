"""Rebuilding a gRPC method handler with wrapped behaviour: what every server interceptor here needs.

A handler has one of four behaviours (unary or streamed request, unary or streamed response); an
interceptor wraps it by request kind and keeps the (de)serializers, optionally replacing the deserializer.
:func:`rewrap` is for synchronous servers, :func:`rewrap_aio` for ``grpc.aio`` ones.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

__all__ = ["AsyncCheck", "Behaviour", "Enter", "rewrap", "rewrap_aio"]

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


AsyncCheck = Callable[[Any, Any], Awaitable[None]]
#: Called when a call starts (before its first request message is read); may end the call with
#: ``await context.abort(...)``; returns what to call when the call ends (or None).
Enter = Callable[[Any], Awaitable[Callable[[], None] | None]]


async def _result(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def rewrap_aio(
    handler: grpc.RpcMethodHandler,
    *,
    enter: Enter | None = None,
    check: AsyncCheck | None = None,
    request_deserializer: Deserializer | None = None,
) -> grpc.RpcMethodHandler:
    """For ``grpc.aio`` servers: ``handler`` with ``release = await enter(context)`` before the first request
    message is read and ``release()`` when the call ends, and ``await check(request, context)`` on every
    request message; ``request_deserializer`` replaces the handler's when given.

    The wrapped behaviour may be a coroutine, an async generator, or a plain function or generator. (Plain
    awaits and try/finally rather than async context managers: this runs on every call.)"""
    parse = request_deserializer or handler.request_deserializer
    serialize = handler.response_serializer

    async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if check is not None:
                await check(request, context)
            yield request

    async def stream_out(value: Any) -> AsyncIterator[Any]:  # value: Any, as handlers come in three kinds
        if inspect.isasyncgen(value):
            async for item in value:
                yield item
        elif inspect.isawaitable(value):
            await value  # a coroutine that writes its responses with context.write
        else:
            for item in value:
                yield item

    if handler.unary_unary:
        uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            release = await enter(context) if enter is not None else None
            try:
                if check is not None:
                    await check(request, context)
                return await _result(uu(request, context))
            finally:
                if release is not None:
                    release()

        return grpc.unary_unary_rpc_method_handler(unary_unary, parse, serialize)
    if handler.unary_stream:
        us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            release = await enter(context) if enter is not None else None
            try:
                if check is not None:
                    await check(request, context)
                async for item in stream_out(us(request, context)):
                    yield item
            finally:
                if release is not None:
                    release()

        return grpc.unary_stream_rpc_method_handler(unary_stream, parse, serialize)
    if handler.stream_unary:
        su: Any = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            release = await enter(context) if enter is not None else None
            try:
                return await _result(su(checked(requests, context) if check else requests, context))
            finally:
                if release is not None:
                    release()

        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, serialize)
    if handler.stream_stream:
        ss: Any = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            release = await enter(context) if enter is not None else None
            try:
                async for item in stream_out(ss(checked(requests, context) if check else requests, context)):
                    yield item
            finally:
                if release is not None:
                    release()

        return grpc.stream_stream_rpc_method_handler(stream_stream, parse, serialize)
    return handler
