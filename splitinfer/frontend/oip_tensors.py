"""Tensors of the Open Inference Protocol (KServe v2 / Triton) to and from torch, checked against a model's specs.

Pure: no gRPC. The protocol carries a tensor as a name, a datatype string ("FP32", "INT64", ...), a shape, and
its data either in ``raw_input_contents`` (little-endian, row-major bytes; every platform we run on is
little-endian) or in the typed ``contents`` lists.
Every mismatch with the model's declared inputs is an InvalidArgument that names the tensor and what differs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from splitinfer.codecs import DEFAULT_LIMITS, DecodeLimits
from splitinfer.errors import InvalidArgument
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.pool import manifest
from splitinfer.program.serde import parse_dtype
from splitinfer.results.keys import shown

__all__ = ["TensorSpec", "datatype_of", "parse_spec", "read_inputs", "write_outputs"]

_TORCH_BY_DATATYPE: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
_DATATYPE_BY_TORCH = {v: k for k, v in _TORCH_BY_DATATYPE.items()}
#: The typed ``contents`` list each datatype travels in (FP16 and BF16 have none: raw bytes only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as the protocol describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    #: Dimension 0 is the batch and takes any size from 1 up to the model's max_batch_size.
    dynamic_batch: bool = False

    def __str__(self) -> str:
        dims = [str(d) for d in self.shape]
        if self.dynamic_batch:
            dims[0] = "N"
        return f"{self.name}:{self.datatype}[{', '.join(dims)}]"


def datatype_of(dtype: torch.dtype) -> str:
    try:
        return _DATATYPE_BY_TORCH[dtype]
    except KeyError:
        raise InvalidArgument(f"torch dtype {dtype} has no Open Inference Protocol datatype") from None


def parse_spec(text: str) -> TensorSpec:
    """A manifest spec such as ``"x:float32[1, 3, 224, 224]"`` as the protocol names it."""
    spec = manifest.parse_spec(text)
    return TensorSpec(spec.name, datatype_of(parse_dtype(spec.dtype)), spec.shape, spec.dynamic_batch)


def _element_count(shape: Sequence[int], name: str, limits: DecodeLimits) -> int:
    if len(shape) > limits.max_rank:
        raise InvalidArgument(f"input {shown(name)}: rank {len(shape)} exceeds the limit of {limits.max_rank}")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {shown(name)}: shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def _from_raw(data: bytes, spec: TensorSpec, dtype: torch.dtype) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(spec.shape) * itemsize
    if len(data) != expected:
        raise InvalidArgument(f"input {spec.name!r}: raw contents hold {len(data)} bytes; {spec} needs {expected}")
    if expected == 0:
        return torch.empty(spec.shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(spec.shape)


def _from_contents(message: oip.InferTensorContents, spec: TensorSpec, dtype: torch.dtype) -> torch.Tensor:
    field = _CONTENTS_FIELD.get(spec.datatype)
    if field is None:
        raise InvalidArgument(f"input {spec.name!r}: {spec.datatype} travels only in raw_input_contents")
    values = getattr(message, field)
    count = math.prod(spec.shape)
    if len(values) != count:
        raise InvalidArgument(
            f"input {spec.name!r}: {field} holds {len(values)} values; shape {list(spec.shape)} needs {count}"
        )
    return torch.tensor(list(values), dtype=dtype).reshape(spec.shape)


def read_inputs(
    request: oip.ModelInferRequest,
    expected: Sequence[TensorSpec],
    limits: DecodeLimits = DEFAULT_LIMITS,
    max_batch_size: int = 1,
) -> dict[str, torch.Tensor]:
    """The request's input tensors, each checked against the model's ``expected`` inputs: every dimension
    exactly, except the batch dimension of a dynamic-batch input, which takes 1 to ``max_batch_size`` rows
    (the same number for every input)."""
    by_name = {s.name: s for s in expected}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents; they must pair up")
    tensors: dict[str, torch.Tensor] = {}
    batch_sizes: set[int] = set()
    total = 0
    for index, given in enumerate(request.inputs):
        spec = by_name.get(given.name)
        if spec is None:
            raise InvalidArgument(
                f"model has no input {shown(given.name)}; its inputs are {[str(s) for s in expected]}"
            )
        if given.name in tensors:
            raise InvalidArgument(f"input {shown(given.name)} is given twice")
        shape = tuple(given.shape)
        count = _element_count(shape, given.name, limits)
        batched = (
            spec.dynamic_batch and len(shape) == len(spec.shape) and shape[1:] == spec.shape[1:]
            and 1 <= shape[0] <= max_batch_size
        )  # fmt: skip
        if given.datatype != spec.datatype or (shape != spec.shape and not batched):
            limit = f" (batch 1 to {max_batch_size})" if spec.dynamic_batch else ""
            raise InvalidArgument(f"input {shown(given.name)} must be {spec}{limit}; got {given.datatype}{list(shape)}")
        if spec.dynamic_batch:
            batch_sizes.add(shape[0])
            if len(batch_sizes) > 1:
                raise InvalidArgument(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
            spec = TensorSpec(spec.name, spec.datatype, shape, True)
        dtype = _TORCH_BY_DATATYPE[spec.datatype]
        total += count * torch.empty((), dtype=dtype).element_size()
        if total > limits.max_tensor_bytes:
            raise InvalidArgument(f"inputs exceed the limit of {limits.max_tensor_bytes} bytes")
        if raw:
            if given.HasField("contents"):
                raise InvalidArgument(f"input {shown(given.name)} has both contents and raw_input_contents")
            tensors[given.name] = _from_raw(raw[index], spec, dtype)
        else:
            tensors[given.name] = _from_contents(given.contents, spec, dtype)
    missing = [s.name for s in expected if s.name not in tensors]
    if missing:
        raise InvalidArgument(f"missing inputs {missing}; the model needs {[str(s) for s in expected]}")
    return tensors


def write_outputs(
    response: oip.ModelInferResponse, outputs: dict[str, torch.Tensor], names: Sequence[str] | None = None
) -> None:
    """Adds ``outputs`` (all, or those in ``names`` in that order) to ``response`` as raw little-endian bytes."""
    for name in names if names is not None else list(outputs):
        tensor = outputs[name].detach().contiguous()
        response.outputs.add(name=name, datatype=datatype_of(tensor.dtype), shape=list(tensor.shape))
        response.raw_output_contents.append(tensor.view(-1).view(torch.uint8).numpy().tobytes())
