"""Lossless steps: byte compression with decoding bounded by the size the tensor's shape implies.

Decoders are given the exact number of bytes to expect and never produce more: a frame that declares a
different size, or data that expands past it (a decompression bomb), is refused before or while
decompressing, never after allocating without bound.
"""

from __future__ import annotations

import threading
from typing import Protocol

import lz4.block
import zstandard

from splitinfer.codecs.errors import DecodeError
from splitinfer.v1 import tensor_pb2

__all__ = ["LOSSLESS_STEPS", "LosslessStep"]


class LosslessStep(Protocol):
    """One lossless codec."""

    def compress(self, data: memoryview, level: int) -> bytes:
        """Compressed bytes of ``data`` (any contiguous buffer)."""
        ...

    def decompress(self, data: bytes, expected_size: int) -> bytes:
        """Exactly ``expected_size`` bytes, or DecodeError."""
        ...


class _Store:
    def compress(self, data: memoryview, level: int) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes, expected_size: int) -> bytes:
        if len(data) != expected_size:
            raise DecodeError(f"uncompressed payload is {len(data)} bytes, dtype and shape imply {expected_size}")
        return data


class _Lz4:
    def compress(self, data: memoryview, level: int) -> bytes:
        if level > 0:
            return lz4.block.compress(data, mode="high_compression", compression=level, store_size=False)
        return lz4.block.compress(data, store_size=False)

    def decompress(self, data: bytes, expected_size: int) -> bytes:
        if expected_size == 0:
            if data not in (b"", b"\x00"):
                raise DecodeError("lz4 payload for an empty tensor must be empty")
            return b""
        try:
            out = lz4.block.decompress(data, uncompressed_size=expected_size)
        except lz4.block.LZ4BlockError as exc:
            raise DecodeError(f"lz4 payload is corrupt or expands past {expected_size} bytes: {exc}") from None
        if len(out) != expected_size:
            raise DecodeError(f"lz4 payload decompressed to {len(out)} bytes, dtype and shape imply {expected_size}")
        return bytes(out)


class _Zstd:
    def __init__(self) -> None:
        self._local = threading.local()  # zstd contexts are not safe to share between threads

    def _compressor(self, level: int) -> zstandard.ZstdCompressor:
        cache: dict[int, zstandard.ZstdCompressor] = self._local.__dict__.setdefault("c", {})
        if level not in cache:
            cache[level] = zstandard.ZstdCompressor(level=level)
        return cache[level]

    def compress(self, data: memoryview, level: int) -> bytes:
        return self._compressor(level).compress(data)

    def decompress(self, data: bytes, expected_size: int) -> bytes:
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"zstd payload has no valid frame header: {exc}") from None
        # zstandard trusts a frame's declared content size over max_output_size, so check it first.
        if declared != -1 and declared != expected_size:
            raise DecodeError(f"zstd frame declares {declared} bytes, dtype and shape imply {expected_size}")
        dctx = self._local.__dict__.get("d")
        if dctx is None:
            dctx = self._local.d = zstandard.ZstdDecompressor()
        try:
            out = dctx.decompress(data, max_output_size=expected_size, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise DecodeError(
                f"zstd payload is corrupt, truncated or larger than {expected_size} bytes: {exc}"
            ) from None
        if len(out) != expected_size:
            raise DecodeError(f"zstd payload decompressed to {len(out)} bytes, dtype and shape imply {expected_size}")
        return out


LOSSLESS_STEPS: dict[tensor_pb2.LosslessCodec, LosslessStep] = {
    tensor_pb2.LOSSLESS_CODEC_NONE: _Store(),
    tensor_pb2.LOSSLESS_CODEC_LZ4: _Lz4(),
    tensor_pb2.LOSSLESS_CODEC_ZSTD: _Zstd(),
}

_missing = set(tensor_pb2.LosslessCodec.values()) - set(LOSSLESS_STEPS) - {tensor_pb2.LOSSLESS_CODEC_UNSPECIFIED}
if _missing:  # pragma: no cover - guards against a proto change without a code change
    raise ImportError(
        f"LosslessCodec values without a step: {sorted(tensor_pb2.LosslessCodec.Name(v) for v in _missing)}"
    )
