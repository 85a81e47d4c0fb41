"""The wire's element types and their numpy and torch equivalents.

numpy is the base (bfloat16 through ``ml_dtypes``): the torch-free agent uses it alone. The torch table is
built on first use, so that importing this module never imports torch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from splitinfer.codecs.errors import DecodeError, EncodeError
from splitinfer.v1 import tensor_pb2

if TYPE_CHECKING:
    import torch

__all__ = ["FLOATING", "from_numpy", "from_torch", "itemsize", "to_numpy", "to_torch"]

DataType = tensor_pb2.DataType

_TO_NUMPY: dict[DataType, np.dtype[Any]] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype(np.float32),
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype(np.float16),
    tensor_pb2.DATA_TYPE_BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    tensor_pb2.DATA_TYPE_FLOAT64: np.dtype(np.float64),
    tensor_pb2.DATA_TYPE_INT8: np.dtype(np.int8),
    tensor_pb2.DATA_TYPE_INT16: np.dtype(np.int16),
    tensor_pb2.DATA_TYPE_INT32: np.dtype(np.int32),
    tensor_pb2.DATA_TYPE_INT64: np.dtype(np.int64),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype(np.uint8),
    tensor_pb2.DATA_TYPE_BOOL: np.dtype(np.bool_),
}
_FROM_NUMPY: dict[np.dtype[Any], DataType] = {v: k for k, v in _TO_NUMPY.items()}

#: Wire types a lossy codec may change.
FLOATING = frozenset(
    {
        tensor_pb2.DATA_TYPE_FLOAT32,
        tensor_pb2.DATA_TYPE_FLOAT16,
        tensor_pb2.DATA_TYPE_BFLOAT16,
        tensor_pb2.DATA_TYPE_FLOAT64,
    }
)

# Every value of the enum but UNSPECIFIED must have a type: checked when the module loads.
_missing = set(DataType.values()) - set(_TO_NUMPY) - {tensor_pb2.DATA_TYPE_UNSPECIFIED}
if _missing:  # pragma: no cover - guards against a proto change without a code change
    raise ImportError(f"DataType values without a numpy dtype: {sorted(DataType.Name(v) for v in _missing)}")


@functools.cache
def _torch_tables() -> tuple[dict[DataType, torch.dtype], dict[torch.dtype, DataType]]:
    import torch

    names = {tensor_pb2.DATA_TYPE_BFLOAT16: "bfloat16", tensor_pb2.DATA_TYPE_BOOL: "bool"}
    to_torch = {k: getattr(torch, names.get(k, str(v))) for k, v in _TO_NUMPY.items()}
    return to_torch, {v: k for k, v in to_torch.items()}


def to_numpy(dtype: DataType) -> np.dtype[Any]:
    """The numpy dtype of a wire type; DecodeError for UNSPECIFIED or unknown values."""
    try:
        return _TO_NUMPY[dtype]
    except KeyError:
        raise DecodeError(f"unsupported tensor dtype {_enum_name(dtype)}") from None


def from_numpy(dtype: np.dtype[Any]) -> DataType:
    """The wire type of a numpy dtype; EncodeError for types the wire cannot carry."""
    try:
        return _FROM_NUMPY[np.dtype(dtype)]
    except (KeyError, TypeError):
        supported = ", ".join(str(t) for t in _FROM_NUMPY)
        raise EncodeError(f"dtype {dtype} cannot travel on the wire; supported: {supported}") from None


def to_torch(dtype: DataType) -> torch.dtype:
    """The torch dtype of a wire type; DecodeError for UNSPECIFIED or unknown values."""
    try:
        return _torch_tables()[0][dtype]
    except KeyError:
        raise DecodeError(f"unsupported tensor dtype {_enum_name(dtype)}") from None


def from_torch(dtype: torch.dtype) -> DataType:
    """The wire type of a torch dtype; EncodeError for types the wire cannot carry (complex, float8...)."""
    table = _torch_tables()[1]
    try:
        return table[dtype]
    except KeyError:
        supported = ", ".join(str(t).removeprefix("torch.") for t in table)
        raise EncodeError(f"dtype {dtype} cannot travel on the wire; supported: {supported}") from None


def itemsize(dtype: torch.dtype | np.dtype[Any]) -> int:
    """Bytes per element (torch or numpy dtype)."""
    return int(dtype.itemsize)


def _enum_name(value: int) -> str:
    try:
        return DataType.Name(value)
    except ValueError:
        return f"<unknown value {value}>"
