"""torch tensors to and from the ``splitinfer.v1.Tensor`` wire message.

Encoding: make contiguous on the CPU, apply the lossy step (floating-point tensors only), then the lossless
step. Decoding validates everything it reads from the peer before it allocates: dtype, codec, shape, the
element count against :class:`DecodeLimits`, the declared payload size, and the exact decompressed size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from splitinfer.codecs import dtypes
from splitinfer.codecs.errors import DecodeError
from splitinfer.codecs.lossless import LOSSLESS_STEPS
from splitinfer.codecs.lossy import LOSSY_STEPS
from splitinfer.codecs.spec import CodecSpec
from splitinfer.v1 import tensor_pb2

__all__ = [
    "DecodeLimits",
    "WireTensor",
    "aligned_buffer",
    "decode_tensor",
    "decode_wire",
    "encode_tensor",
    "encode_wire",
    "head_of",
    "tensor_nbytes",
]

_NO_CODEC = CodecSpec()


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what a decoder accepts from a peer."""

    #: Largest decoded tensor, in bytes.
    max_tensor_bytes: int = 1 << 30
    #: Largest rank.
    max_rank: int = 16


DEFAULT_LIMITS = DecodeLimits()


def tensor_nbytes(shape: tuple[int, ...] | list[int], dtype: torch.dtype) -> int:
    """Bytes of a dense tensor of this shape and dtype."""
    return math.prod(shape) * dtypes.itemsize(dtype)


def _as_buffer(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy (the tensor must be contiguous and stay alive while in use)."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy())  # type: ignore[arg-type]  # numpy arrays export the buffer protocol


def _from_bytes(data: bytes | bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A new tensor holding a copy of ``data``, in memory from torch's allocator.

    Copying into a fresh torch buffer (rather than wrapping a bytearray) keeps the data 64-byte aligned, which
    the convolution kernels need for full speed: a misaligned input measurably slowed whole CNN partitions.
    """
    if isinstance(data, memoryview) and data.nbytes and data.contiguous and not data.readonly:
        view = np.frombuffer(data, dtype=np.uint8)
        if view.ctypes.data % ALIGNMENT == 0 and data.nbytes % dtypes.itemsize(dtype) == 0:
            # An aligned, writable buffer of our own (see aligned_buffer): wrap it, no copy. (A read-only
            # view of a received message is copied: a partition may write to its inputs.)
            return torch.from_numpy(view).view(dtype).reshape(shape)
    out = torch.empty(shape, dtype=dtype)
    if data:
        out.reshape(-1).view(torch.uint8).numpy()[:] = np.frombuffer(data, dtype=np.uint8)
    return out


#: Byte alignment of decoded tensors (what torch's CPU allocator gives).
ALIGNMENT = 64


def aligned_buffer(nbytes: int) -> memoryview:
    """A writable buffer of ``nbytes`` from torch's allocator (64-byte aligned): a stream assembled into it
    decodes without a copy when it carries no codec."""
    return memoryview(torch.empty(nbytes, dtype=torch.uint8).numpy())  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class WireTensor:
    """An encoded tensor: metadata (``head``, a ``Tensor`` message with an empty payload) and its payload
    bytes, kept apart so that a payload assembled from chunks or produced by an encoder is never copied into
    an intermediate message (decode it with :func:`decode_wire`, stream it with ``split_wire``)."""

    head: tensor_pb2.Tensor
    payload: bytes | bytearray | memoryview

    @property
    def name(self) -> str:
        return self.head.name

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    @classmethod
    def from_message(cls, message: tensor_pb2.Tensor) -> WireTensor:
        return cls(head_of(message), message.payload)  # reading a bytes field copies it: read it once

    def to_message(self) -> tensor_pb2.Tensor:
        """A complete ``Tensor`` message (copies the payload once)."""
        message = tensor_pb2.Tensor()
        self.fill(message)
        return message

    def fill(self, message: tensor_pb2.Tensor) -> None:
        """Makes ``message`` (e.g. a new element of a repeated field, from ``.add()``) this tensor, in place:
        no intermediate message to copy again."""
        message.CopyFrom(self.head)
        message.payload = self.payload if isinstance(self.payload, bytes) else bytes(self.payload)


def head_of(message: tensor_pb2.Tensor) -> tensor_pb2.Tensor:
    """``message``'s metadata without its payload (CopyFrom would copy the payload too)."""
    return tensor_pb2.Tensor(
        name=message.name,
        dtype=message.dtype,
        shape=message.shape,
        encoding=message.encoding,
        payload_size_bytes=message.payload_size_bytes,
    )


def encode_wire(tensor: torch.Tensor, name: str = "", codec: CodecSpec = _NO_CODEC) -> WireTensor:
    """``tensor`` encoded with ``codec``, as metadata plus payload (see :func:`encode_tensor`)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    wire_dtype = dtypes.from_torch(tensor.dtype)
    lossy = codec.lossy if wire_dtype in dtypes.FLOATING else tensor_pb2.LOSSY_CODEC_NONE
    encoding = tensor_pb2.Encoding(lossy=lossy, lossless=codec.lossless, level=codec.level)
    stored = LOSSY_STEPS[lossy].encode(tensor, encoding).contiguous()
    raw = _as_buffer(stored)
    if not raw.nbytes:
        encoding.lossless = tensor_pb2.LOSSLESS_CODEC_NONE
        encoding.level = 0
    if encoding.lossless == tensor_pb2.LOSSLESS_CODEC_NONE:
        payload: bytes | memoryview = raw  # the tensor's own bytes, no copy (the view keeps them alive)
    else:
        payload = LOSSLESS_STEPS[encoding.lossless].compress(raw, encoding.level)
    head = tensor_pb2.Tensor(
        name=name, dtype=wire_dtype, shape=list(tensor.shape), encoding=encoding, payload_size_bytes=len(payload)
    )
    return WireTensor(head, payload)


def encode_tensor(tensor: torch.Tensor, name: str = "", codec: CodecSpec = _NO_CODEC) -> tensor_pb2.Tensor:
    """The wire message for ``tensor`` encoded with ``codec``.

    A lossy step only applies to floating-point tensors; for others the message records LOSSY_CODEC_NONE and
    the values travel exactly. Non-contiguous, non-CPU and grad-requiring tensors are accepted.
    """
    encoded = encode_wire(tensor, name, codec)
    encoded.head.payload = bytes(encoded.payload)
    return encoded.head


def decode_shape(message: tensor_pb2.Tensor, limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[int, ...]:
    """The message's shape, checked: rank, non-negative dimensions, element count within the limits."""
    shape = tuple(message.shape)
    if len(shape) > limits.max_rank:
        raise DecodeError(f"tensor {message.name!r}: rank {len(shape)} exceeds the limit {limits.max_rank}")
    if any(d < 0 for d in shape):
        raise DecodeError(f"tensor {message.name!r}: shape {list(shape)} has a negative dimension")
    dtype = dtypes.to_torch(message.dtype)
    # Python ints do not overflow, so the product is exact however large the claimed dimensions are.
    nbytes = math.prod(shape) * dtypes.itemsize(dtype)
    if nbytes > limits.max_tensor_bytes:
        raise DecodeError(
            f"tensor {message.name!r}: shape {list(shape)} of {dtype} is {nbytes} bytes, "
            f"over the limit of {limits.max_tensor_bytes}"
        )
    return shape


def decode_tensor(message: tensor_pb2.Tensor, limits: DecodeLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """The tensor a complete wire message carries; DecodeError (INVALID_ARGUMENT) for anything malformed."""
    return decode_wire(message, message.payload, limits)  # reading a bytes field copies it: read it once


def decode_wire(
    message: tensor_pb2.Tensor, payload: bytes | bytearray | memoryview, limits: DecodeLimits = DEFAULT_LIMITS
) -> torch.Tensor:
    """The tensor whose metadata ``message`` holds and whose encoded bytes are ``payload`` (e.g. the one
    buffer a stream was assembled into; ``message.payload`` is ignored). Same checks as decode_tensor."""
    dtype = dtypes.to_torch(message.dtype)
    shape = decode_shape(message, limits)
    encoding = message.encoding
    lossy = encoding.lossy or tensor_pb2.LOSSY_CODEC_NONE
    lossless = encoding.lossless or tensor_pb2.LOSSLESS_CODEC_NONE
    if lossy not in LOSSY_STEPS:
        raise DecodeError(f"tensor {message.name!r}: unknown lossy codec value {lossy}")
    if lossless not in LOSSLESS_STEPS:
        raise DecodeError(f"tensor {message.name!r}: unknown lossless codec value {lossless}")
    if lossy != tensor_pb2.LOSSY_CODEC_NONE and message.dtype not in dtypes.FLOATING:
        raise DecodeError(
            f"tensor {message.name!r}: lossy codec {tensor_pb2.LossyCodec.Name(lossy)} "
            f"applies to floating-point tensors, not {dtype}"
        )
    if len(payload) != message.payload_size_bytes:
        raise DecodeError(
            f"tensor {message.name!r}: payload is {len(payload)} bytes but "
            f"payload_size_bytes declares {message.payload_size_bytes}"
        )
    step = LOSSY_STEPS[lossy]
    stored_dtype = step.stored_dtype(dtype)
    raw = LOSSLESS_STEPS[lossless].decompress(payload, tensor_nbytes(shape, stored_dtype))  # type: ignore[arg-type]
    stored = _from_bytes(raw, stored_dtype, shape)
    try:
        return step.decode(stored, dtype, encoding)
    except DecodeError as exc:
        raise DecodeError(f"tensor {message.name!r}: {exc}") from None
