"""What a stored result is keyed by: its caller, its request id, and a digest of the inputs it answered.

Results belong to their caller: the same request id from two callers names two requests. Ids are bounded
when a request comes in and again when a result is written, so that no stored row can outgrow a page. A
retry must bring the same inputs as the first try (same digest), or it is another request under a reused id.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable

from splitinfer.errors import InvalidArgument
from splitinfer.v1 import tensor_pb2

__all__ = ["MAX_ID_BYTES", "check_id", "decode_token_list", "input_digest", "shown"]

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


def _no_float(text: str) -> object:
    raise ValueError(f"not an integer: {text[:20]}")


def decode_token_list(token: str, length: int, max_chars: int, refused: InvalidArgument) -> list[object]:
    """The JSON list of ``length`` items a page token encodes (URL-safe base64, integers only, no floats or
    NaN), or ``refused`` for anything else; the caller checks each item's type and range."""
    if len(token) > max_chars:
        raise refused
    try:
        value = json.loads(
            base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True),
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (ValueError, UnicodeError):
        raise refused from None
    if not (isinstance(value, list) and len(value) == length):
        raise refused
    return value
