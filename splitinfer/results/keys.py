"""What a stored result is keyed by: its caller, its request id, and a digest of the inputs it answered.

Results belong to their caller: the same request id from two callers names two requests. Ids are bounded
when a request comes in and again when a result is written, so that no stored row can outgrow a page. A
retry must bring the same inputs as the first try (same digest), or it is another request under a reused id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from splitinfer.errors import InvalidArgument
from splitinfer.v1 import tensor_pb2

__all__ = ["MAX_ID_BYTES", "check_id", "input_digest", "shown"]

#: Longest request id or caller name, in UTF-8 bytes.
MAX_ID_BYTES = 128
#: Longest piece of caller-supplied text quoted back in an error message.
SHOWN_CHARS = 64


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters (the caller sent it: never echo
    an unbounded string)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def check_id(value: str, what: str = "request_id", *, required: bool = True) -> str:
    """``value`` when it is a usable id: at most MAX_ID_BYTES bytes of printable text."""
    if not value:
        if required:
            raise InvalidArgument(f"{what} must not be empty")
        return value
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise InvalidArgument(f"{what} is {size} bytes long; at most {MAX_ID_BYTES} are allowed")
    if not value.isprintable():
        raise InvalidArgument(f"{what} {shown(value)} holds control characters")
    return value


def input_digest(tensors: Iterable[tensor_pb2.Tensor]) -> str:
    """sha256 (hex) of encoded input tensors, independent of the order they came in."""
    digest = hashlib.sha256()
    for tensor in sorted(tensors, key=lambda t: t.name):
        body = tensor.SerializeToString(deterministic=True)
        digest.update(len(body).to_bytes(8, "big"))
        digest.update(body)
    return digest.hexdigest()
