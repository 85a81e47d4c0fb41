"""The one table from domain errors to gRPC status codes, and the one decorator that applies it.

Every servicer method is wrapped once with :func:`map_errors`; it works on all four handler kinds, sync or
``grpc.aio`` (a coroutine, an async generator, a function, a generator)::

    class Servicer(...):
        @map_errors(on_failure=metrics.count_failure)
        async def Process(self, requests, context): ...

What the decorator does with an exception raised by the handler:

* a domain error (:mod:`splitinfer.errors`) ends the call with the code :data:`STATUS_FOR` gives and the
  error's message, truncated to :data:`MAX_DETAILS_CHARS` characters (a message can echo a caller's input);
* anything else ends it with INTERNAL and ``internal error (request <id>)``: the request id of the current
  call (:func:`set_request_id`), or a fresh error id; the traceback is logged here, never sent;
* ``on_failure(code)`` is called once per failed call, for metrics by code (without ``on_failure``, the
  servicer's own ``count_failure(code)`` method when it has one).

A call the handler (or an interceptor) already ended with ``context.abort`` passes through untouched.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from splitinfer import errors

__all__ = [
    "MAX_DETAILS_CHARS",
    "STATUS_FOR",
    "abort",
    "bounded",
    "error_from_rpc",
    "map_errors",
    "set_request_id",
    "status_for",
]

log = logging.getLogger(__name__)

#: Longest status message a server sends: messages may quote what a caller sent, and gRPC metadata is bounded.
MAX_DETAILS_CHARS = 1024

#: Most specific first: the first matching class decides the code.
STATUS_FOR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Internal, grpc.StatusCode.INTERNAL),
)

_ERROR_FOR: dict[grpc.StatusCode, type[errors.SplitInferError]] = {
    code: cls for cls, code in STATUS_FOR if issubclass(cls, errors.SplitInferError)
}
#: Codes from a peer that say "the call did not get through", as opposed to "the request is wrong".
_PEER_UNREACHABLE = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("splitinfer_request_id", default="")

FailureHook = Callable[[grpc.StatusCode], None]
F = TypeVar("F", bound=Callable[..., Any])


def set_request_id(request_id: str) -> None:
    """Names the request the current call serves, for INTERNAL messages and logs (bounded to 128 chars)."""
    _request_id.set(request_id[:128])


def bounded(message: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """``message`` cut to ``limit`` characters, saying how much was cut."""
    if len(message) <= limit:
        return message
    return f"{message[: limit - 40]}... ({len(message) - limit + 40} more characters)"


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_FOR:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _details(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and the message the caller gets for ``exc``; unexpected errors are logged with a traceback."""
    code = status_for(exc)
    if isinstance(exc, errors.SplitInferError):
        return code, bounded(str(exc) or type(exc).__name__)
    request_id = _request_id.get() or f"error-{uuid.uuid4().hex[:12]}"
    log.error("internal error in request %s", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request {request_id}); the server logged the cause"


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """Ends a synchronous RPC with the status the table gives for ``exc`` and its bounded message."""
    code, details = _details(exc)
    context.abort(code, details)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _already_ended(exc: BaseException, context: Any) -> bool:
    if isinstance(exc, grpc.aio.AbortError):
        return True
    try:
        return context.code() is not None  # a sync context.abort() raised a bare Exception after setting it
    except Exception:
        return False


def map_errors(on_failure: FailureHook | None = None) -> Callable[[F], F]:
    """Decorator for servicer methods ``(self, request_or_iterator, context)``; see the module docstring."""

    def failed(exc: BaseException, context: Any, servicer: Any) -> tuple[grpc.StatusCode, str] | None:
        hook = on_failure or getattr(servicer, "count_failure", None)
        if _already_ended(exc, context):
            code = context.code() if hasattr(context, "code") else None
            if hook is not None and isinstance(code, grpc.StatusCode):
                hook(code)
            return None
        code, details = _details(exc)
        if hook is not None:
            hook(code)
        return code, details

    def decorate(method: F) -> F:
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def stream_async(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                _request_id.set("")
                try:
                    async for item in method(self, request, context):
                        yield item
                except Exception as exc:
                    ended = failed(exc, context, self)
                    if ended is None:
                        raise
                    await context.abort(*ended)

            return stream_async  # type: ignore[return-value]
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def unary_async(self: Any, request: Any, context: Any) -> Any:
                _request_id.set("")
                try:
                    return await method(self, request, context)
                except Exception as exc:
                    ended = failed(exc, context, self)
                    if ended is None:
                        raise
                    await context.abort(*ended)

            return unary_async  # type: ignore[return-value]
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def stream_sync(self: Any, request: Any, context: Any) -> Iterator[Any]:
                _request_id.set("")
                try:
                    yield from method(self, request, context)
                except Exception as exc:
                    ended = failed(exc, context, self)
                    if ended is None:
                        raise
                    context.abort(*ended)

            return stream_sync  # type: ignore[return-value]

        @functools.wraps(method)
        def unary_sync(self: Any, request: Any, context: Any) -> Any:
            _request_id.set("")
            try:
                return method(self, request, context)
            except Exception as exc:
                ended = failed(exc, context, self)
                if ended is None:
                    raise
                context.abort(*ended)

        return unary_sync  # type: ignore[return-value]

    return decorate


def error_from_rpc(exc: grpc.RpcError | grpc.aio.AioRpcError, where: str) -> errors.SplitInferError:
    """The domain error for a failed call to a peer, so that it can travel further up unchanged.

    INTERNAL stays INTERNAL (a peer's bug is not a reason to try another replica); codes that mean the call
    did not get through (UNKNOWN, CANCELLED, ABORTED, or no code) become Unavailable.
    """
    code = exc.code() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call | grpc.aio.AioRpcError) else str(exc)
    cls = errors.Unavailable if code in _PEER_UNREACHABLE else _ERROR_FOR.get(code, errors.Unavailable)
    return cls(bounded(f"{where}: {details}"))
