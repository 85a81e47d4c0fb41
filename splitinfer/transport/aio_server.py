"""``grpc.aio`` servers with every limit explicit: message sizes, concurrent calls, streams per peer.

    server = new_aio_server(ServerLimits(max_streams=2048, max_streams_per_peer=256), security)
    add_XServicer_to_server(servicer, server)      # async servicers
    port = bind(server, "127.0.0.1:0", security)   # splitinfer.transport.channel.bind works for both kinds
    await server.start()

A waiting or idle call costs a coroutine, not a thread. Limits:

* ``max_message_bytes``: send and receive limit of one message;
* ``max_streams``: data-plane calls (every method not in ``exempt_methods``) in progress at once; the next
  one is refused with RESOURCE_EXHAUSTED before its first message is read;
* ``max_streams_per_peer``: the same per peer (the caller's IP address, so that one host cannot take all of
  ``max_streams``);
* ``max_concurrent_rpcs``: gRPC's own hard ceiling on all calls (data plane and exempt ones together);
  it must leave room above ``max_streams`` so that health checks and status keep being answered when the
  data plane is full.

Interceptors, in order: authentication and role check (with ``security``, :class:`AioAuthInterceptor`),
then the stream caps (:class:`StreamLimiter`) together with malformed-request mapping to INVALID_ARGUMENT
(what :class:`AioMalformedGuard` does, in the limiter's one wrapping). ``StreamLimiter.active`` and
``.refused`` feed status and metrics.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import grpc

from splitinfer.security.interceptor import AuthInterceptor
from splitinfer.security.tls import ServerSecurity
from splitinfer.transport.channel import MAX_MESSAGE_BYTES, channel_options
from splitinfer.transport.guard import _Malformed, _tolerant
from splitinfer.transport.handlers import rewrap_aio

__all__ = [
    "DEFAULT_EXEMPT_METHODS",
    "AioAuthInterceptor",
    "AioMalformedGuard",
    "ServerLimits",
    "StreamLimiter",
    "new_aio_server",
    "peer_host",
]

log = logging.getLogger("splitinfer.transport")

#: Method-name prefixes never counted against the stream caps: health checks and reflection.
DEFAULT_EXEMPT_METHODS: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    #: Largest single message sent or received, bytes.
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: Data-plane calls in progress at once; more are refused with RESOURCE_EXHAUSTED.
    max_streams: int = 2048
    #: Data-plane calls in progress at once from one peer (IP address).
    max_streams_per_peer: int = 1024
    #: gRPC's hard ceiling on all calls at once, exempt ones included (must exceed ``max_streams``).
    max_concurrent_rpcs: int = 2304
    #: Method-name prefixes not counted against the stream caps (health, reflection, status...).
    exempt_methods: tuple[str, ...] = DEFAULT_EXEMPT_METHODS

    def __post_init__(self) -> None:
        if min(self.max_message_bytes, self.max_streams, self.max_streams_per_peer) < 1:
            raise ValueError("server limits must be positive")
        if self.max_streams_per_peer > self.max_streams:
            raise ValueError(
                f"max_streams_per_peer ({self.max_streams_per_peer}) cannot exceed max_streams ({self.max_streams})"
            )
        if self.max_concurrent_rpcs <= self.max_streams:
            raise ValueError(
                f"max_concurrent_rpcs ({self.max_concurrent_rpcs}) must exceed max_streams ({self.max_streams}) "
                "so that health checks are answered when the data plane is full"
            )


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string: 'ipv4:10.0.0.1:5000' -> 'ipv4:10.0.0.1', 'ipv6:[::1]:5' ->
    'ipv6:[::1]'; anything else (unix sockets...) as is."""
    if peer.startswith("ipv4:") or peer.startswith("ipv6:"):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit():
            return host
    return peer


class _Wrapped:
    """Each method's wrapped handler, built once: an interceptor's wrapping depends only on the method and
    the handler it wraps (the same object on every call), not on the call, and building it costs a few
    closures and a handler per call otherwise."""

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(
        self, method: str, handler: grpc.RpcMethodHandler, wrap: Callable[[], grpc.RpcMethodHandler]
    ) -> grpc.RpcMethodHandler:
        hit = self._by_method.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = wrap()
        self._by_method[method] = (handler, wrapped)
        return wrapped


def _malformed(method: str, request: _Malformed) -> str:
    """The INVALID_ARGUMENT details for a request of ``method`` that did not parse."""
    return f"malformed {method} request: {request.error}"


def _refuse_malformed(method: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
    """The check of :class:`AioMalformedGuard`: INVALID_ARGUMENT for a request that did not parse."""

    async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(method, request))

    return check


class StreamLimiter(grpc.aio.ServerInterceptor):
    """Caps data-plane calls in progress, in total and per peer; see the module docstring.

    With ``guard``, it also does what :class:`AioMalformedGuard` does, in the same wrapping: one interceptor
    and one handler layer per call instead of two (each costs an interceptor coroutine and a wrapper
    coroutine on every call; ``new_aio_server`` uses it this way)."""

    def __init__(
        self, limits: ServerLimits, on_refused: Callable[[], None] | None = None, *, guard: bool = False
    ) -> None:
        self._wrapped = _Wrapped()
        self._limits = limits
        self._on_refused = on_refused
        self._guard = guard
        self._lock = threading.Lock()
        self._per_peer: dict[str, int] = {}
        #: Data-plane calls in progress.
        self.active = 0
        #: Calls refused so far because a cap was reached.
        self.refused = 0

    def _exempt(self, method: str) -> bool:
        return any(method.startswith(prefix) for prefix in self._limits.exempt_methods)

    def _acquire(self, peer: str) -> str | None:
        """None when admitted, else why not."""
        with self._lock:
            if self.active >= self._limits.max_streams:
                self.refused += 1
                return f"server is at its limit of {self._limits.max_streams} concurrent streams"
            count = self._per_peer.get(peer, 0)
            if count >= self._limits.max_streams_per_peer:
                self.refused += 1
                return f"peer is at its limit of {self._limits.max_streams_per_peer} concurrent streams"
            self._per_peer[peer] = count + 1
            self.active += 1
            return None

    def _release(self, peer: str) -> None:
        with self._lock:
            self.active -= 1
            left = self._per_peer[peer] - 1
            if left:
                self._per_peer[peer] = left
            else:
                del self._per_peer[peer]

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        return self._wrapped.get(method, handler, lambda: self._wrap(method, handler))

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` as this limiter serves it (built once per method, see :class:`_Wrapped`)."""
        guarding: dict[str, Any] = {}
        if self._guard:
            guarding = {
                "check": _refuse_malformed(method),
                "request_deserializer": _tolerant(handler.request_deserializer),
            }
        if self._exempt(method):
            return rewrap_aio(handler, **guarding) if guarding else handler
        if self._guard and handler.unary_unary and inspect.iscoroutinefunction(handler.unary_unary):
            return self._unary(method, handler)
        release = self._release

        async def slot(context: grpc.aio.ServicerContext) -> Callable[[], None]:
            peer = peer_host(context.peer() or "")
            refused = self._acquire(peer)
            if refused is not None:
                await self._refuse(context, refused)
            return lambda: release(peer)

        return rewrap_aio(handler, enter=slot, **guarding)

    async def _refuse(self, context: grpc.aio.ServicerContext, refused: str) -> None:
        if self._on_refused is not None:
            self._on_refused()
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{refused}; retry later")

    def _unary(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """What ``rewrap_aio(handler, enter=slot, check=..., request_deserializer=...)`` gives a coroutine
        unary-unary handler with the guard, in one coroutine instead of four (the wrapper, the slot, the
        check, the result's): the cap taken before anything else, then the malformed check, the handler,
        and the slot given back however the call ends. This runs on every ProcessOnce and InferOnce."""
        behaviour: Any = handler.unary_unary
        acquire, release, refuse = self._acquire, self._release, self._refuse

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = peer_host(context.peer() or "")
            refused = acquire(peer)
            if refused is not None:
                await refuse(context, refused)
            try:
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _malformed(method, request))
                return await behaviour(request, context)
            finally:
                release(peer)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
        )


class AioMalformedGuard(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT, not INTERNAL, for request messages that are not valid protobuf (as
    :class:`~splitinfer.transport.guard.MalformedRequestGuard` does for synchronous servers)."""

    def __init__(self) -> None:
        self._wrapped = _Wrapped()

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        return self._wrapped.get(
            method,
            handler,
            lambda: rewrap_aio(
                handler, check=_refuse_malformed(method), request_deserializer=_tolerant(handler.request_deserializer)
            ),
        )


class AioAuthInterceptor(grpc.aio.ServerInterceptor):
    """The authentication and role check of :class:`~splitinfer.security.interceptor.AuthInterceptor`, for
    ``grpc.aio`` servers, before the first request message is read."""

    def __init__(self, security: ServerSecurity) -> None:
        self._sync = AuthInterceptor(security.tokens)
        self._wrapped = _Wrapped()

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        sync = self._sync

        class _Aborted(Exception):
            pass

        class _Recorder:
            """Lets the synchronous check run against an aio context: records its abort instead."""

            def __init__(self, context: grpc.aio.ServicerContext) -> None:
                self._context = context
                self.ended: tuple[grpc.StatusCode, str] | None = None

            def __getattr__(self, name: str) -> Any:
                return getattr(self._context, name)

            def abort(self, code: grpc.StatusCode, details: str) -> None:
                self.ended = (code, details)
                raise _Aborted

        async def authorized(context: grpc.aio.ServicerContext) -> None:
            recorder = _Recorder(context)
            with suppress(_Aborted):
                sync._check(method, recorder)  # type: ignore[arg-type]
            if recorder.ended is not None:
                await context.abort(*recorder.ended)

        return self._wrapped.get(method, handler, lambda: rewrap_aio(handler, enter=authorized))


def new_aio_server(
    limits: ServerLimits | None = None,
    security: ServerSecurity | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    on_refused: Callable[[], None] | None = None,
) -> tuple[grpc.aio.Server, StreamLimiter]:
    """A ``grpc.aio`` server with ``limits`` (see the module) and its StreamLimiter; call from inside the
    event loop that will run it. Extra ``interceptors`` run after authentication and the caps;
    ``on_refused()`` is called for every call the caps refuse (for metrics)."""
    limits = limits or ServerLimits()
    limiter = StreamLimiter(limits, on_refused, guard=True)  # the caps and AioMalformedGuard's check in one
    chain: list[grpc.aio.ServerInterceptor] = [AioAuthInterceptor(security)] if security is not None else []
    chain += [limiter, *interceptors]
    server = grpc.aio.server(
        options=[*channel_options(limits.max_message_bytes), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        interceptors=chain,
    )
    return server, limiter
