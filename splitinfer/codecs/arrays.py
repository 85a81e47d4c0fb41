"""numpy arrays to and from the ``splitinfer.v1.Tensor`` wire message, without torch.

The same wire format as :mod:`splitinfer.codecs.wire` (a test holds the two byte-for-byte equal for every
dtype and codec): what the torch-free edge agent encodes, a node decodes, and back. bfloat16 arrays use
``ml_dtypes.bfloat16``. Decoding checks everything it reads before it allocates, as the torch decoder does.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import ml_dtypes
import numpy as np

from splitinfer.codecs import dtypes
from splitinfer.codecs.errors import DecodeError, EncodeError
from splitinfer.codecs.lossless import LOSSLESS_STEPS
from splitinfer.codecs.spec import CodecSpec
from splitinfer.v1 import tensor_pb2

__all__ = ["ArrayLimits", "decode_array", "encode_array"]

_QMIN, _QMAX = -128, 127
_F32 = np.float32


class ArrayLimits(Protocol):
    """What a decoder accepts (``splitinfer.codecs.DecodeLimits`` fits)."""

    @property
    def max_tensor_bytes(self) -> int: ...

    @property
    def max_rank(self) -> int: ...


class _Defaults:
    max_tensor_bytes = 1 << 30
    max_rank = 16


def _affine(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.minimum(lo, _F32(0.0)).astype(_F32)
    hi = np.maximum(hi, _F32(0.0)).astype(_F32)
    scale = ((hi - lo) / _F32(_QMAX - _QMIN)).astype(_F32)
    scale = np.where(scale > 0, scale, _F32(1.0)).astype(_F32)
    zero_point = np.clip(np.round(_F32(_QMIN) - lo / scale), _QMIN, _QMAX).astype(_F32)
    return scale, zero_point


def _finite(x: np.ndarray) -> None:
    if not bool(np.isfinite(x).all()):
        raise EncodeError("int8 quantisation needs finite values; the tensor holds NaN or Inf (use fp16 or none)")


def _lossy_encode(x: np.ndarray, encoding: tensor_pb2.Encoding) -> np.ndarray:
    lossy = encoding.lossy
    if lossy == tensor_pb2.LOSSY_CODEC_NONE:
        return x
    if lossy == tensor_pb2.LOSSY_CODEC_FP16:
        return x.astype(np.float16)
    if lossy == tensor_pb2.LOSSY_CODEC_BF16:
        return x.astype(_F32).astype(ml_dtypes.bfloat16) if x.dtype == np.float64 else x.astype(ml_dtypes.bfloat16)
    f = x.astype(_F32)
    _finite(f)
    if lossy == tensor_pb2.LOSSY_CODEC_INT8_AFFINE:
        if f.size == 0:
            scale, zero_point = np.ones((), _F32), np.zeros((), _F32)
        else:
            scale, zero_point = _affine(f.min(), f.max())
        encoding.scales.append(float(scale))
        encoding.zero_points.append(int(zero_point))
        return np.clip(np.round(f / scale) + zero_point, _QMIN, _QMAX).astype(np.int8)
    if lossy == tensor_pb2.LOSSY_CODEC_INT8_PER_CHANNEL:
        return _per_channel(f, encoding)
    raise EncodeError(f"unknown lossy codec value {lossy}")


def _per_channel(f: np.ndarray, encoding: tensor_pb2.Encoding) -> np.ndarray:
    """One scale per slice along axis 1 (the channel of NCHW / NC; axis 0 for rank < 2)."""
    shape = f.shape
    axis = 1 if f.ndim >= 2 else 0
    if f.ndim == 0:
        f = f.reshape(1)
    encoding.channel_axis = axis
    count = f.shape[axis]
    channels = np.moveaxis(f, axis, 0).reshape(count, f.size // count if count else 0)
    if channels.shape[1] == 0:
        scale, zero_point = np.ones(count, _F32), np.zeros(count, _F32)
    else:
        scale, zero_point = _affine(channels.min(axis=1), channels.max(axis=1))
    encoding.scales.extend(float(v) for v in scale.reshape(-1))
    encoding.zero_points.extend(int(z) for z in zero_point.reshape(-1))
    view = [1] * f.ndim
    view[axis] = -1
    q = np.clip(np.round(f / scale.reshape(view)) + zero_point.reshape(view), _QMIN, _QMAX)
    return q.astype(np.int8).reshape(shape)


def _stored_dtype(lossy: int, dtype: np.dtype[Any]) -> np.dtype[Any]:
    if lossy == tensor_pb2.LOSSY_CODEC_FP16:
        return np.dtype(np.float16)
    if lossy == tensor_pb2.LOSSY_CODEC_BF16:
        return np.dtype(ml_dtypes.bfloat16)
    if lossy in (tensor_pb2.LOSSY_CODEC_INT8_AFFINE, tensor_pb2.LOSSY_CODEC_INT8_PER_CHANNEL):
        return np.dtype(np.int8)
    return dtype


def _params(encoding: tensor_pb2.Encoding, expected: int) -> tuple[np.ndarray, np.ndarray]:
    scales = np.asarray(list(encoding.scales), dtype=_F32)
    zero_points = np.asarray(list(encoding.zero_points), dtype=_F32)
    if scales.size != expected or zero_points.size != expected:
        raise DecodeError(
            f"int8 codec needs {expected} scale(s) and zero point(s), got {scales.size} and {zero_points.size}"
        )
    if expected and not bool((np.isfinite(scales) & (scales > 0)).all()):
        raise DecodeError("int8 codec scales must be finite and positive")
    if expected and not bool(((zero_points >= _QMIN) & (zero_points <= _QMAX)).all()):
        raise DecodeError(f"int8 codec zero points must lie in [{_QMIN}, {_QMAX}]")
    return scales, zero_points


def _lossy_decode(stored: np.ndarray, dtype: np.dtype[Any], encoding: tensor_pb2.Encoding) -> np.ndarray:
    lossy = encoding.lossy or tensor_pb2.LOSSY_CODEC_NONE
    if lossy == tensor_pb2.LOSSY_CODEC_NONE:
        return stored
    if lossy in (tensor_pb2.LOSSY_CODEC_FP16, tensor_pb2.LOSSY_CODEC_BF16):
        return stored.astype(dtype)
    if lossy == tensor_pb2.LOSSY_CODEC_INT8_AFFINE:
        scales, zero_points = _params(encoding, 1)
        return ((stored.astype(_F32) - zero_points[0]) * scales[0]).astype(dtype)
    shape = stored.shape
    x = stored.reshape(1) if stored.ndim == 0 else stored
    axis = encoding.channel_axis
    if not 0 <= axis < x.ndim:
        raise DecodeError(f"int8 per-channel axis {axis} is out of range for a tensor of rank {stored.ndim}")
    scales, zero_points = _params(encoding, x.shape[axis])
    view = [1] * x.ndim
    view[axis] = -1
    return ((x.astype(_F32) - zero_points.reshape(view)) * scales.reshape(view)).astype(dtype).reshape(shape)


def encode_array(array: np.ndarray, name: str = "", codec: CodecSpec | None = None) -> tensor_pb2.Tensor:
    """The wire message for ``array`` encoded with ``codec`` (lossy steps only touch floating types)."""
    codec = codec or CodecSpec()
    array = np.asarray(array)
    wire_dtype = dtypes.from_numpy(array.dtype)
    lossy = codec.lossy if wire_dtype in dtypes.FLOATING else tensor_pb2.LOSSY_CODEC_NONE
    encoding = tensor_pb2.Encoding(lossy=lossy, lossless=codec.lossless, level=codec.level)
    stored = np.ascontiguousarray(_lossy_encode(array, encoding))
    raw = memoryview(stored.reshape(-1).view(np.uint8)) if stored.size else memoryview(b"")  # type: ignore[arg-type]
    if not raw.nbytes:
        encoding.lossless = tensor_pb2.LOSSLESS_CODEC_NONE
        encoding.level = 0
    payload = LOSSLESS_STEPS[encoding.lossless].compress(raw, encoding.level)
    return tensor_pb2.Tensor(
        name=name,
        dtype=wire_dtype,
        shape=list(array.shape),
        encoding=encoding,
        payload_size_bytes=len(payload),
        payload=bytes(payload),
    )


def decode_array(message: tensor_pb2.Tensor, limits: ArrayLimits | None = None) -> np.ndarray:
    """The array a complete wire message carries; DecodeError (INVALID_ARGUMENT) for anything malformed."""
    limits = limits or _Defaults()
    dtype = dtypes.to_numpy(message.dtype)
    shape = tuple(message.shape)
    if len(shape) > limits.max_rank:
        raise DecodeError(f"tensor {message.name!r}: rank {len(shape)} exceeds the limit {limits.max_rank}")
    if any(d < 0 for d in shape):
        raise DecodeError(f"tensor {message.name!r}: shape {list(shape)} has a negative dimension")
    if math.prod(shape) * dtype.itemsize > limits.max_tensor_bytes:
        raise DecodeError(f"tensor {message.name!r}: shape {list(shape)} exceeds {limits.max_tensor_bytes} bytes")
    encoding = message.encoding
    lossy = encoding.lossy or tensor_pb2.LOSSY_CODEC_NONE
    lossless = encoding.lossless or tensor_pb2.LOSSLESS_CODEC_NONE
    if lossy not in tensor_pb2.LossyCodec.values() or lossy == tensor_pb2.LOSSY_CODEC_UNSPECIFIED:
        raise DecodeError(f"tensor {message.name!r}: unknown lossy codec value {lossy}")
    if lossless not in LOSSLESS_STEPS:
        raise DecodeError(f"tensor {message.name!r}: unknown lossless codec value {lossless}")
    if lossy != tensor_pb2.LOSSY_CODEC_NONE and message.dtype not in dtypes.FLOATING:
        raise DecodeError(f"tensor {message.name!r}: a lossy codec applies to floating-point tensors, not {dtype}")
    payload = message.payload
    if len(payload) != message.payload_size_bytes:
        raise DecodeError(
            f"tensor {message.name!r}: payload is {len(payload)} bytes but "
            f"payload_size_bytes declares {message.payload_size_bytes}"
        )
    stored_dtype = _stored_dtype(lossy, dtype)
    raw = LOSSLESS_STEPS[lossless].decompress(payload, math.prod(shape) * stored_dtype.itemsize)
    stored = np.frombuffer(raw, dtype=stored_dtype).reshape(shape).copy() if shape else None
    if stored is None:
        stored = np.frombuffer(raw, dtype=stored_dtype).reshape(()).copy()
    try:
        return _lossy_decode(stored, dtype, encoding)
    except DecodeError as exc:
        raise DecodeError(f"tensor {message.name!r}: {exc}") from None
