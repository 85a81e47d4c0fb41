"""Lossy steps: how a floating-point tensor is reduced before it goes on the wire.

Each step maps a tensor to the *stored* tensor whose bytes travel, writing any parameters it needs (scales,
zero points) into the Encoding message, and maps a stored tensor back. Steps live in a registry keyed by the
proto enum; the module refuses to load if a value of the enum has no step.
"""

from __future__ import annotations

from typing import Protocol

import torch

from splitinfer.codecs.errors import DecodeError, EncodeError
from splitinfer.v1 import tensor_pb2

__all__ = ["LOSSY_STEPS", "LossyStep"]


class LossyStep(Protocol):
    """One lossy codec."""

    def stored_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of the elements that travel, for an input of ``dtype``."""
        ...

    def encode(self, tensor: torch.Tensor, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        """The stored tensor; writes the step's parameters into ``encoding``."""
        ...

    def decode(self, stored: torch.Tensor, dtype: torch.dtype, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        """The tensor of ``dtype`` that ``stored`` stands for; DecodeError for bad parameters."""
        ...


class _Identity:
    def stored_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype

    def encode(self, tensor: torch.Tensor, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        return tensor

    def decode(self, stored: torch.Tensor, dtype: torch.dtype, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        return stored


class _Cast:
    """Travel in a narrower float type (fp16 overflows to +-inf, as a cast does)."""

    def __init__(self, wire: torch.dtype) -> None:
        self._wire = wire

    def stored_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self._wire

    def encode(self, tensor: torch.Tensor, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        return tensor.to(self._wire)

    def decode(self, stored: torch.Tensor, dtype: torch.dtype, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        return stored.to(dtype)


_QMIN, _QMAX = -128, 127


def _affine_params(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per slice; the range always includes 0 so that zeros stay exact."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = (hi - lo) / float(_QMAX - _QMIN)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(_QMIN - lo / scale), _QMIN, _QMAX)
    return scale, zero_point


def _require_finite(tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise EncodeError("int8 quantisation needs finite values; the tensor holds NaN or Inf (use fp16 or none)")


def _check_params(scales: torch.Tensor, zero_points: torch.Tensor, expected: int) -> None:
    if scales.numel() != expected or zero_points.numel() != expected:
        raise DecodeError(
            f"int8 codec needs {expected} scale(s) and zero point(s), got {scales.numel()} and {zero_points.numel()}"
        )
    if expected and not bool((torch.isfinite(scales) & (scales > 0)).all()):
        raise DecodeError("int8 codec scales must be finite and positive")
    if expected and not bool(((zero_points >= _QMIN) & (zero_points <= _QMAX)).all()):
        raise DecodeError(f"int8 codec zero points must lie in [{_QMIN}, {_QMAX}]")


class _Int8PerTensor:
    def stored_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.int8

    def encode(self, tensor: torch.Tensor, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        x = tensor.to(torch.float32)
        _require_finite(x)
        if x.numel() == 0:
            scale, zero_point = torch.ones(()), torch.zeros(())
        else:
            scale, zero_point = _affine_params(x.min(), x.max())
        encoding.scales.append(float(scale))
        encoding.zero_points.append(int(zero_point))
        return torch.clamp(torch.round(x / scale) + zero_point, _QMIN, _QMAX).to(torch.int8)

    def decode(self, stored: torch.Tensor, dtype: torch.dtype, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        scales = torch.tensor(list(encoding.scales), dtype=torch.float32)
        zero_points = torch.tensor(list(encoding.zero_points), dtype=torch.float32)
        _check_params(scales, zero_points, 1)
        return ((stored.to(torch.float32) - zero_points[0]) * scales[0]).to(dtype)


class _Int8PerChannel:
    """One scale per slice along ``channel_axis`` (axis 1, the channel of NCHW / NC, for tensors of rank >= 2)."""

    def stored_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.int8

    @staticmethod
    def _by_channel(x: torch.Tensor, axis: int) -> torch.Tensor:
        channels = x.shape[axis]
        return x.movedim(axis, 0).reshape(channels, x.numel() // channels if channels else 0)

    def encode(self, tensor: torch.Tensor, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        x = tensor.to(torch.float32)
        _require_finite(x)
        axis = 1 if x.dim() >= 2 else 0
        if x.dim() == 0:
            x = x.reshape(1)
        encoding.channel_axis = axis
        channels = self._by_channel(x, axis)
        if channels.shape[1] == 0:
            scale = torch.ones(channels.shape[0])
            zero_point = torch.zeros(channels.shape[0])
        else:
            scale, zero_point = _affine_params(channels.amin(dim=1), channels.amax(dim=1))
        encoding.scales.extend(scale.tolist())
        encoding.zero_points.extend(int(z) for z in zero_point.tolist())
        view = [1] * x.dim()
        view[axis] = -1
        q = torch.clamp(torch.round(x / scale.view(view)) + zero_point.view(view), _QMIN, _QMAX)
        return q.to(torch.int8).reshape(tensor.shape)

    def decode(self, stored: torch.Tensor, dtype: torch.dtype, encoding: tensor_pb2.Encoding) -> torch.Tensor:
        shape = stored.shape
        x = stored.reshape(1) if stored.dim() == 0 else stored
        axis = encoding.channel_axis
        if not 0 <= axis < x.dim():
            raise DecodeError(f"int8 per-channel axis {axis} is out of range for a tensor of rank {stored.dim()}")
        scales = torch.tensor(list(encoding.scales), dtype=torch.float32)
        zero_points = torch.tensor(list(encoding.zero_points), dtype=torch.float32)
        _check_params(scales, zero_points, x.shape[axis])
        view = [1] * x.dim()
        view[axis] = -1
        return ((x.to(torch.float32) - zero_points.view(view)) * scales.view(view)).to(dtype).reshape(shape)


LOSSY_STEPS: dict[tensor_pb2.LossyCodec, LossyStep] = {
    tensor_pb2.LOSSY_CODEC_NONE: _Identity(),
    tensor_pb2.LOSSY_CODEC_FP16: _Cast(torch.float16),
    tensor_pb2.LOSSY_CODEC_BF16: _Cast(torch.bfloat16),
    tensor_pb2.LOSSY_CODEC_INT8_AFFINE: _Int8PerTensor(),
    tensor_pb2.LOSSY_CODEC_INT8_PER_CHANNEL: _Int8PerChannel(),
}

_missing = set(tensor_pb2.LossyCodec.values()) - set(LOSSY_STEPS) - {tensor_pb2.LOSSY_CODEC_UNSPECIFIED}
if _missing:  # pragma: no cover - guards against a proto change without a code change
    raise ImportError(f"LossyCodec values without a step: {sorted(tensor_pb2.LossyCodec.Name(v) for v in _missing)}")
