"""A server interceptor that authenticates every call and checks its role (see :mod:`.auth`).

The caller is identified by a bearer token (``authorization: Bearer <token>`` metadata) when one is sent,
else by its verified client certificate (mutual TLS). A call without a valid credential ends with
UNAUTHENTICATED, one whose identity lacks the role with PERMISSION_DENIED; both are logged with the method
and the peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from splitinfer.security.auth import (
    Identity,
    PermissionDenied,
    TokenTable,
    Unauthenticated,
    authorize,
    certificate_identity,
)
from splitinfer.transport.handlers import Behaviour, rewrap

__all__ = ["AuthInterceptor", "identify"]

log = logging.getLogger("splitinfer.security")


def identify(tokens: TokenTable, context: grpc.ServicerContext) -> Identity | None:
    """The caller of this call: its bearer token's identity when it sends one, else its verified client
    certificate's, else None. Raises Unauthenticated for a malformed or unknown token.

    Services call it too (with the same table) when what they answer depends on who asks: whose plans and
    results a request may touch.
    """
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
            return tokens.identify(token.strip())
    names = context.auth_context().get("x509_common_name")
    if names:
        first = names if isinstance(names, bytes) else next(iter(names))
        return certificate_identity(first.decode())
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: TokenTable | None) -> None:
        self._tokens = tokens or TokenTable()

    def _identify(self, context: grpc.ServicerContext) -> Identity | None:
        return identify(self._tokens, context)

    def _check(self, method: str, context: grpc.ServicerContext) -> None:
        try:
            authorize(method, self._identify(context))
        except Unauthenticated as exc:
            log.warning("refused %s from %s: unauthenticated: %s", method, context.peer(), exc)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except PermissionDenied as exc:
            log.warning("refused %s from %s: permission denied: %s", method, context.peer(), exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:  # fmt: skip
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        check = self._check

        def guard(behaviour: Behaviour) -> Behaviour:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                check(method, context)
                return behaviour(request, context)

            return guarded

        # A streamed request is checked before its first message is read, as a unary one is.
        return rewrap(handler, unary_request=guard, stream_request=guard)
