"""Errors raised by the tensor wire format."""

from __future__ import annotations

from splitinfer.errors import InvalidArgument

__all__ = ["DecodeError", "EncodeError"]


class DecodeError(InvalidArgument):
    """Bytes or metadata received from a peer do not form a valid tensor.

    Raised for every malformed input (bad dtype or codec, negative or oversized shape, declared size that does
    not match the payload, corrupt or truncated compressed data, decompression output larger than declared).
    Services answer INVALID_ARGUMENT with its message.
    """


class EncodeError(InvalidArgument):
    """A tensor cannot be encoded with the requested codec (e.g. int8 quantisation of non-finite values)."""
