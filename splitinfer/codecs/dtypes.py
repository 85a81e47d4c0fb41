"""The wire's element types and their torch equivalents."""

from __future__ import annotations

import torch

from splitinfer.codecs.errors import DecodeError, EncodeError
from splitinfer.v1 import tensor_pb2

__all__ = ["FLOATING", "from_torch", "itemsize", "to_torch"]

DataType = tensor_pb2.DataType

_TO_TORCH: dict[DataType, torch.dtype] = {
    tensor_pb2.DATA_TYPE_FLOAT32: torch.float32,
    tensor_pb2.DATA_TYPE_FLOAT16: torch.float16,
    tensor_pb2.DATA_TYPE_BFLOAT16: torch.bfloat16,
    tensor_pb2.DATA_TYPE_FLOAT64: torch.float64,
    tensor_pb2.DATA_TYPE_INT8: torch.int8,
    tensor_pb2.DATA_TYPE_INT16: torch.int16,
    tensor_pb2.DATA_TYPE_INT32: torch.int32,
    tensor_pb2.DATA_TYPE_INT64: torch.int64,
    tensor_pb2.DATA_TYPE_UINT8: torch.uint8,
    tensor_pb2.DATA_TYPE_BOOL: torch.bool,
}
_FROM_TORCH: dict[torch.dtype, DataType] = {v: k for k, v in _TO_TORCH.items()}

#: Wire types a lossy codec may change.
FLOATING = frozenset(
    {
        tensor_pb2.DATA_TYPE_FLOAT32,
        tensor_pb2.DATA_TYPE_FLOAT16,
        tensor_pb2.DATA_TYPE_BFLOAT16,
        tensor_pb2.DATA_TYPE_FLOAT64,
    }
)

# Every value of the enum but UNSPECIFIED must have a torch type: checked when the module loads.
_missing = set(DataType.values()) - set(_TO_TORCH) - {tensor_pb2.DATA_TYPE_UNSPECIFIED}
if _missing:  # pragma: no cover - guards against a proto change without a code change
    raise ImportError(f"DataType values without a torch dtype: {sorted(DataType.Name(v) for v in _missing)}")


def to_torch(dtype: DataType) -> torch.dtype:
    """The torch dtype of a wire type; DecodeError for UNSPECIFIED or unknown values."""
    try:
        return _TO_TORCH[dtype]
    except KeyError:
        raise DecodeError(f"unsupported tensor dtype {_enum_name(dtype)}") from None


def from_torch(dtype: torch.dtype) -> DataType:
    """The wire type of a torch dtype; EncodeError for types the wire cannot carry (complex, float8...)."""
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        supported = ", ".join(str(t).removeprefix("torch.") for t in _FROM_TORCH)
        raise EncodeError(f"dtype {dtype} cannot travel on the wire; supported: {supported}") from None


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element."""
    return torch.empty((), dtype=dtype).element_size()


def _enum_name(value: int) -> str:
    try:
        return DataType.Name(value)
    except ValueError:
        return f"<unknown value {value}>"
