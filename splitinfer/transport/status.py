"""The one table from domain errors to gRPC status codes, and helpers to apply it."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from splitinfer import errors

__all__ = ["STATUS_FOR", "abort", "error_from_rpc", "status_for"]

log = logging.getLogger(__name__)

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
)

_ERROR_FOR: dict[grpc.StatusCode, type[errors.SplitInferError]] = {
    code: cls for cls, code in STATUS_FOR if issubclass(cls, errors.SplitInferError)
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_FOR:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """Ends the RPC with the status the table gives for ``exc`` and its message."""
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
    context.abort(code, str(exc) or type(exc).__name__)
    raise AssertionError("context.abort returned")  # pragma: no cover


def error_from_rpc(exc: grpc.RpcError, where: str) -> errors.SplitInferError:
    """The domain error for a failed call to a peer, so that it can travel further up unchanged."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    cls = _ERROR_FOR.get(code, errors.Unavailable)
    return cls(f"{where}: {details}")
