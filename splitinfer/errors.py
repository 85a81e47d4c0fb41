"""Domain errors shared by the core and the services.

The core raises these; the services map them to gRPC status codes in one table
(:mod:`splitinfer.transport.status`). Each carries a message meant for the caller: it says what was wrong.
"""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SplitInferError",
    "Unauthenticated",
    "Unavailable",
]


class SplitInferError(Exception):
    """Base class of every error splitinfer reports to a caller."""


class InvalidArgument(SplitInferError, ValueError):
    """The request itself is wrong: bad tensor, wrong shape, unknown codec, malformed route."""


class NotFound(SplitInferError, LookupError):
    """A named thing (model, partition, artifact, result) does not exist here."""


class Unavailable(SplitInferError):
    """The thing exists but cannot serve now (loading, shutting down, unreachable peer)."""


class ResourceExhausted(SplitInferError):
    """A queue, size or memory bound was hit; retry later or send less."""


class DeadlineExceeded(SplitInferError, TimeoutError):
    """The request ran out of time."""


class FailedPrecondition(SplitInferError):
    """The system is not in a state that allows the operation (e.g. artifact checksum mismatch)."""


class Unauthenticated(SplitInferError):
    """The caller presented no valid credential."""


class PermissionDenied(SplitInferError):
    """The caller is known but lacks the role the operation needs."""


class Internal(SplitInferError):
    """Something went wrong inside a server (a bug, not the request); the message names a request id to find
    the traceback in that server's log. Never retried on another replica."""
