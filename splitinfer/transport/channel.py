"""gRPC channels and servers, with options set explicitly everywhere and security in one place.

A process's outgoing security (CA, client certificate, token) is set once with :func:`configure_client`
(daemons do it from ``--tls-dir``); every channel opened with :func:`open_channel` then uses it, unless a
caller passes its own. Servers get TLS and the auth interceptor from a :class:`ServerSecurity`.
"""

from __future__ import annotations

from concurrent import futures

import grpc

from splitinfer.security.interceptor import AuthInterceptor
from splitinfer.security.tls import ClientSecurity, ServerSecurity
from splitinfer.transport.guard import MalformedRequestGuard

__all__ = [
    "MAX_MESSAGE_BYTES",
    "bind",
    "channel_options",
    "client_security",
    "configure_client",
    "new_server",
    "open_aio_channel",
    "open_channel",
]

#: Largest single gRPC message. Tensors above DEFAULT_CHUNK_BYTES travel chunked, so this only bounds one chunk
#: plus headers; it is generous so that other clients sending whole tensors still work.
MAX_MESSAGE_BYTES = 64 << 20

_client_security: ClientSecurity | None = None


def configure_client(security: ClientSecurity | None) -> None:
    """Sets the security every channel of this process uses by default (None: plaintext)."""
    global _client_security
    _client_security = security


def client_security() -> ClientSecurity | None:
    return _client_security


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


def open_channel(
    address: str, max_message_bytes: int = MAX_MESSAGE_BYTES, security: ClientSecurity | None = None
) -> grpc.Channel:
    """A channel to ``address``: TLS with ``security`` (or the process default) when set, else plaintext."""
    security = security or _client_security
    options = channel_options(max_message_bytes)
    if security is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, security.credentials(), options=options)


def open_aio_channel(
    address: str, max_message_bytes: int = MAX_MESSAGE_BYTES, security: ClientSecurity | None = None
) -> grpc.aio.Channel:
    """:func:`open_channel` for ``grpc.aio`` callers (create it inside the event loop that uses it)."""
    security = security or _client_security
    options = channel_options(max_message_bytes)
    if security is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, security.credentials(), options=options)


def new_server(
    max_workers: int, max_message_bytes: int = MAX_MESSAGE_BYTES, security: ServerSecurity | None = None
) -> grpc.Server:
    """A server; with ``security`` every call is authenticated and checked against its role."""
    interceptors: list[grpc.ServerInterceptor] = [AuthInterceptor(security.tokens)] if security is not None else []
    interceptors.append(MalformedRequestGuard())
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=channel_options(max_message_bytes),
        maximum_concurrent_rpcs=None,
        interceptors=interceptors,
    )


def bind(server: grpc.Server | grpc.aio.Server, address: str, security: ServerSecurity | None = None) -> int:
    """Adds a listening port (TLS with ``security``); returns the bound port."""
    if security is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, security.credentials())
