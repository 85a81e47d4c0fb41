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
    "decodes_in_place",
    "encode_tensor",
    "encode_wire",
    "head_of",
    "is_plain_encoding",
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


#: numpy's type strings (native byte order) of the dtypes numpy shares with torch: a tensor of these is
#: viewed as its bytes, or made from them, in one torch call (``Tensor.numpy``, ``torch.from_numpy``)
#: instead of three (``reshape``, ``view``, then the conversion). On this machine each torch call on the
#: request path costs 0.03-0.05 ms when caches are cold (a node between requests, after a partition's
#: kernels): a shared decode of ResNet-18's cut 0.22 -> 0.13 ms cold (0.011 ms warm).
_NUMPY_TYPESTR: dict[torch.dtype, str] = {
    d: np.dtype(n).str
    for d, n in (
        (torch.float32, np.float32), (torch.float64, np.float64), (torch.float16, np.float16),
        (torch.int8, np.int8), (torch.uint8, np.uint8), (torch.int16, np.int16), (torch.int32, np.int32),
        (torch.int64, np.int64), (torch.bool, np.bool_),
    )
}  # fmt: skip


def _as_buffer(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy (the tensor must be contiguous and stay alive while in use)."""
    if tensor.dtype in _NUMPY_TYPESTR:  # one torch call, the same flat bytes
        array = tensor.numpy()
        return memoryview(array).cast("B") if array.size else memoryview(b"")  # type: ignore[arg-type]
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return memoryview(flat.numpy())  # type: ignore[arg-type]  # numpy arrays export the buffer protocol


#: Byte alignment of the buffers splitinfer allocates for decoded tensors (what torch's CPU allocator gives).
ALIGNMENT = 64
#: Alignment a payload needs to be used in place. Measured (ResNet-18@224's two server partitions, one thread,
#: interpreter and onnxruntime): inputs at 16-, 32- and 48-byte offsets from a 64-byte boundary ran as fast as
#: 64-byte aligned ones (p1 9.78-9.99 / 6.97-7.15 ms, p2 13.65-13.93 / 8.64-8.75 ms, all within noise); the
#: bytes gRPC Python hands a receiver start 16-byte aligned (malloc's alignment), so a sender that places a
#: payload at a 16-byte offset of its message (``Tensor.padding``) lets the receiver use it in place.
SHARE_ALIGNMENT = 16


class _Shared:
    """Exposes read-only bytes to numpy as a writable array (torch refuses, with a warning, to wrap a
    read-only one) and keeps them alive. Only for readers that never write: see ``decode_wire``'s ``share``."""

    __slots__ = ("__array_interface__", "_keep")

    def __init__(
        self, view: memoryview, address: int, shape: tuple[int, ...] | None = None, typestr: str = "|u1"
    ) -> None:
        self._keep = view
        self.__array_interface__ = {
            "data": (address, False), "shape": (view.nbytes,) if shape is None else shape, "typestr": typestr,
            "version": 3,
        }  # fmt: skip


def _shares(data: bytes | bytearray | memoryview, itemsize: int, share: bool | None) -> int:
    """The address of ``data`` when a tensor may be it in place (see :func:`decode_wire`), else 0."""
    if share and isinstance(data, bytes):
        data = memoryview(data)
    if share is False or not isinstance(data, memoryview) or not data.nbytes or not data.contiguous:
        return 0
    if data.nbytes % itemsize or not (share or not data.readonly):
        return 0
    address: int = np.frombuffer(data, dtype=np.uint8).ctypes.data
    return address if address % (SHARE_ALIGNMENT if data.readonly else ALIGNMENT) == 0 else 0


def decodes_in_place(message: tensor_pb2.Tensor, payload: bytes | bytearray | memoryview, share: bool | None) -> bool:
    """Whether :func:`decode_wire` with this ``share`` makes the tensor of ``payload`` without a copy (no
    codec step, memory suitably aligned), e.g. to decide that decoding is too cheap to hand to a thread."""
    if not is_plain_encoding(message.encoding):
        return False
    try:
        itemsize = dtypes.itemsize(dtypes.to_torch(message.dtype))
    except DecodeError:
        return False
    return _shares(payload, itemsize, share) != 0


_PLAIN_LOSSY = (tensor_pb2.LOSSY_CODEC_UNSPECIFIED, tensor_pb2.LOSSY_CODEC_NONE)
_PLAIN_LOSSLESS = (tensor_pb2.LOSSLESS_CODEC_UNSPECIFIED, tensor_pb2.LOSSLESS_CODEC_NONE)


def is_plain_encoding(encoding: tensor_pb2.Encoding) -> bool:
    """Whether a tensor's ``encoding`` has no codec step (its payload is the raw bytes)."""
    return encoding.lossy in _PLAIN_LOSSY and encoding.lossless in _PLAIN_LOSSLESS


def _from_bytes(
    data: bytes | bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...], share: bool | None = None
) -> torch.Tensor:
    """A tensor of ``data``'s bytes: ``data`` itself when allowed (``share``, see :func:`decode_wire`) and
    aligned, else a copy in a fresh 64-byte aligned buffer from torch's allocator."""
    itemsize = dtypes.itemsize(dtype)
    address = _shares(data, itemsize, share)
    if address:
        data = memoryview(data)
        typestr = _NUMPY_TYPESTR.get(dtype)
        if typestr is not None and data.nbytes == math.prod(shape) * itemsize:
            # One torch call: numpy makes the shaped array of the bytes (read-only ones through _Shared: the
            # caller promised not to write them, share=True).
            if data.readonly:
                return torch.from_numpy(np.asarray(_Shared(data, address, shape, typestr)))
            return torch.from_numpy(np.frombuffer(data, dtype=typestr).reshape(shape))
        # read-only: the caller promised not to write it (share=True)
        view = np.asarray(_Shared(data, address)) if data.readonly else np.frombuffer(data, dtype=np.uint8)
        return torch.from_numpy(view).view(dtype).reshape(shape)
    out = torch.empty(shape, dtype=dtype)
    if data:
        out.reshape(-1).view(torch.uint8).numpy()[:] = np.frombuffer(data, dtype=np.uint8)
    return out


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
    if tensor.requires_grad:  # as few torch calls as can be: each costs 0.03-0.05 ms cold (_NUMPY_TYPESTR)
        tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    wire_dtype = dtypes.from_torch(tensor.dtype)
    lossy = codec.lossy if wire_dtype in dtypes.FLOATING else tensor_pb2.LOSSY_CODEC_NONE
    encoding = tensor_pb2.Encoding(lossy=lossy, lossless=codec.lossless, level=codec.level)
    stored = LOSSY_STEPS[lossy].encode(tensor, encoding)
    if not stored.is_contiguous():
        stored = stored.contiguous()
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
    message: tensor_pb2.Tensor,
    payload: bytes | bytearray | memoryview,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    share: bool | None = None,
) -> torch.Tensor:
    """The tensor whose metadata ``message`` holds and whose encoded bytes are ``payload`` (e.g. the one
    buffer a stream was assembled into; ``message.payload`` is ignored). Same checks as decode_tensor.

    Without a codec step the tensor may be ``payload``'s memory itself, no copy: ``share=None`` (the default)
    only for a writable buffer of our own (a stream assembled into :func:`aligned_buffer`); ``share=True``
    also for read-only memory (a view of a received message) at a 16-byte aligned address, for a reader
    that never writes the tensor (a partition whose inputs are read-only, see
    ``splitinfer.runtime.aliasing``); ``share=False`` always copies (a reader that may write it, while the
    payload may also be relayed or read by others)."""
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
    stored = _from_bytes(raw, stored_dtype, shape, share if raw is payload else None)
    try:
        return step.decode(stored, dtype, encoding)
    except DecodeError as exc:
        raise DecodeError(f"tensor {message.name!r}: {exc}") from None
