"""Pool manifests as typed data: frozen dataclasses parsed once, with structured tensor specs.

The JSON the pool stores is unchanged in spirit (a division manifest is a blob named by its sha256); this
module is the one place that reads and writes it. Everybody else gets :class:`DivisionManifest`,
:class:`PartitionEntry` and :class:`TensorSpec` objects and never indexes a dict or parses
``"name:dtype[shape]"`` again.

A tensor spec's text form is ``name:dtype[d0, d1, ...]``; a symbolic batch dimension is written ``N`` in
position 0 (``x:float32[N, 3, 224, 224]``) and means "any batch size up to the partition's limit, every
other dimension exactly".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from splitinfer.errors import InvalidArgument

if TYPE_CHECKING:  # splitinfer.postprocess needs torch; the torch-free agent reads manifests too
    from splitinfer.postprocess import PostprocessSpec

__all__ = [
    "DIVISION_FORMAT",
    "DTYPE_ITEMSIZE",
    "DivisionManifest",
    "OnnxInfo",
    "PartitionEntry",
    "TensorSpec",
    "parse_spec",
]

DIVISION_FORMAT = "splitinfer.division/1"

#: Bytes per element of every dtype a manifest may name (numpy/torch spelling).
DTYPE_ITEMSIZE: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
}
BATCH = "N"
_SPEC = re.compile(r"^(?P<name>[^:\s][^:]*):(?P<dtype>[a-z0-9]+)\[(?P<shape>[0-9N, ]*)\]$")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, dtype and shape of a tensor crossing a partition boundary.

    ``dynamic_batch``: dimension 0 is symbolic (any size from 1 up); ``shape[0]`` then holds the size the
    model was exported with.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    dynamic_batch: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_ITEMSIZE:
            raise InvalidArgument(f"tensor spec {self.name!r}: unknown dtype {self.dtype!r}")
        if any(d < 0 for d in self.shape):
            raise InvalidArgument(f"tensor spec {self.name!r}: negative dimension in {list(self.shape)}")
        if self.dynamic_batch and not self.shape:
            raise InvalidArgument(f"tensor spec {self.name!r}: a 0-d tensor has no batch dimension")

    @property
    def itemsize(self) -> int:
        return DTYPE_ITEMSIZE[self.dtype]

    @property
    def nbytes(self) -> int:
        """Bytes at the exported shape (batch 1 for the zoo)."""
        return math.prod(self.shape) * self.itemsize

    def matches(self, dtype: str, shape: Sequence[int]) -> bool:
        """Whether a tensor of ``dtype`` and ``shape`` fits: every dimension exactly, except a symbolic batch
        dimension, which takes any size >= 1."""
        if dtype != self.dtype or len(shape) != len(self.shape):
            return False
        if self.dynamic_batch:
            return shape[0] >= 1 and tuple(shape[1:]) == self.shape[1:]
        return tuple(shape) == self.shape

    def with_batch(self, dynamic: bool) -> TensorSpec:
        return TensorSpec(self.name, self.dtype, self.shape, dynamic)

    def __str__(self) -> str:
        dims = [str(d) for d in self.shape]
        if self.dynamic_batch:
            dims[0] = BATCH
        return f"{self.name}:{self.dtype}[{', '.join(dims)}]"


def parse_spec(text: str, *, batch_size: int = 1) -> TensorSpec:
    """A spec from its text form ``name:dtype[d0, d1]`` (``N`` in position 0 for a symbolic batch, taken as
    ``batch_size``); InvalidArgument for anything else."""
    if not isinstance(text, str):
        raise InvalidArgument(f"tensor spec must be a string, got {type(text).__name__}")
    match = _SPEC.match(text.strip())
    if match is None:
        raise InvalidArgument(f"malformed tensor spec {text!r} (expected name:dtype[d0, d1, ...])")
    dims = [d.strip() for d in match["shape"].split(",") if d.strip()]
    dynamic = bool(dims) and dims[0] == BATCH
    if dynamic:
        dims[0] = str(batch_size)
    if any(not d.isdigit() for d in dims):
        raise InvalidArgument(f"malformed tensor spec {text!r}: only dimension 0 may be {BATCH}")
    return TensorSpec(match["name"], match["dtype"], tuple(int(d) for d in dims), dynamic)


@dataclass(frozen=True, slots=True)
class OnnxInfo:
    """The ONNX twin of a partition, or why there is none.

    ``file`` is the key of the model in the partition's ``files`` (empty when export or its check failed,
    ``reason`` then says why and the partition runs on the interpreter). ``names`` maps each partition tensor
    name to the name the ONNX graph uses for it (identical unless ONNX could not spell it).
    ``max_abs_error`` is the largest difference to the interpreter measured at division time, accepted
    because it was within ``tolerance`` (absolute plus relative to the reference's largest magnitude).
    """

    file: str = ""
    opset: int = 0
    names: Mapping[str, str] = field(default_factory=dict)
    dynamic_batch: bool = False
    quantization: str = ""
    max_abs_error: float = 0.0
    tolerance: float = 0.0
    reason: str = ""

    @property
    def available(self) -> bool:
        return bool(self.file)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "opset": self.opset,
            "names": dict(sorted(self.names.items())),
            "dynamic_batch": self.dynamic_batch,
            "quantization": self.quantization,
            "max_abs_error": self.max_abs_error,
            "tolerance": self.tolerance,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> OnnxInfo:
        if not isinstance(data, dict):
            raise InvalidArgument(f"onnx entry must be an object, got {type(data).__name__}")
        names = data.get("names", {})
        if not isinstance(names, dict):
            raise InvalidArgument("onnx names must be an object")
        return cls(
            file=str(data.get("file", "")),
            opset=int(data.get("opset", 0)),
            names={str(k): str(v) for k, v in names.items()},
            dynamic_batch=bool(data.get("dynamic_batch", False)),
            quantization=str(data.get("quantization", "")),
            max_abs_error=float(data.get("max_abs_error", 0.0)),
            tolerance=float(data.get("tolerance", 0.0)),
            reason=str(data.get("reason", "")),
        )


def _specs(data: Any, what: str, dynamic: bool = False) -> tuple[TensorSpec, ...]:
    if not isinstance(data, list):
        raise InvalidArgument(f"{what} must be a list of tensor specs")
    specs = tuple(parse_spec(s) for s in data)
    return tuple(s.with_batch(True) for s in specs) if dynamic else specs


@dataclass(frozen=True, slots=True)
class PartitionEntry:
    """One partition of a division: its tensors, cost, where its outputs go and its verified files."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    flops: float
    param_bytes: int
    host: str
    #: Output tensor name -> partitions that read it (empty for a model output only).
    successors: Mapping[str, tuple[str, ...]]
    #: File name -> sha256 of the blob holding it.
    files: Mapping[str, str]
    shared_with: tuple[str, ...] = ()
    onnx: OnnxInfo = field(default_factory=OnnxInfo)

    @property
    def fingerprint(self) -> tuple[str, ...]:
        """The program's blobs (the ONNX twin excluded): identical partitions share it."""
        onnx_sha = self.files.get(self.onnx.file) if self.onnx.file else None
        return tuple(sorted(sha for sha in self.files.values() if sha != onnx_sha))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [str(s.with_batch(False)) for s in self.inputs],
            "outputs": [str(s.with_batch(False)) for s in self.outputs],
            "flops": int(self.flops) if float(self.flops).is_integer() else self.flops,
            "param_bytes": self.param_bytes,
            "host": self.host,
            "successors": {k: list(v) for k, v in self.successors.items()},
            "files": dict(self.files),
            "shared_with": list(self.shared_with),
            "onnx": self.onnx.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any) -> PartitionEntry:
        if not isinstance(data, dict):
            raise InvalidArgument("a partition entry must be an object")
        try:
            onnx = OnnxInfo.from_json(data.get("onnx", {}))
            files = data["files"]
            successors = data.get("successors", {})
            if not isinstance(files, dict) or not isinstance(successors, dict):
                raise InvalidArgument("partition files and successors must be objects")
            return cls(
                name=str(data["name"]),
                inputs=_specs(data["inputs"], "inputs", onnx.dynamic_batch),
                outputs=_specs(data["outputs"], "outputs", onnx.dynamic_batch),
                flops=float(data.get("flops", 0.0)),
                param_bytes=int(data.get("param_bytes", 0)),
                host=str(data.get("host", "")),
                successors={str(k): tuple(str(s) for s in v) for k, v in successors.items()},
                files={str(k): str(v) for k, v in files.items()},
                shared_with=tuple(str(s) for s in data.get("shared_with", [])),
                onnx=onnx,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed partition entry: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class DivisionManifest:
    """A model variant's division: its model-level tensors, accuracy and partitions in topological order."""

    model: str
    variant: str
    division: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    accuracy: float
    accuracy_measured: bool
    partitions: tuple[PartitionEntry, ...]
    #: The stage that runs after the last partition, outside the programs (a detector's decode and NMS).
    postprocess: PostprocessSpec | None = None

    def partition(self, name: str) -> PartitionEntry:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError(name)

    def find(self, name: str) -> PartitionEntry | None:
        return next((p for p in self.partitions if p.name == name), None)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": DIVISION_FORMAT,
            "model": self.model,
            "variant": self.variant,
            "division": self.division,
            "inputs": [str(s) for s in self.inputs],
            "outputs": [str(s) for s in self.outputs],
            "accuracy": self.accuracy,
            "accuracy_measured": self.accuracy_measured,
            "partitions": [p.to_json() for p in self.partitions],
            **({"postprocess": self.postprocess.to_json()} if self.postprocess is not None else {}),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: Any) -> DivisionManifest:
        if not isinstance(data, dict):
            raise InvalidArgument("a division manifest must be a JSON object")
        if data.get("format") != DIVISION_FORMAT:
            raise InvalidArgument(f"not a division manifest (format {data.get('format')!r})")
        try:
            partitions = data["partitions"]
            if not isinstance(partitions, list):
                raise InvalidArgument("partitions must be a list")
            return cls(
                model=str(data["model"]),
                variant=str(data["variant"]),
                division=str(data.get("division", "")),
                inputs=_specs(data["inputs"], "inputs"),
                outputs=_specs(data["outputs"], "outputs"),
                accuracy=float(data.get("accuracy", 0.0)),
                accuracy_measured=bool(data.get("accuracy_measured", False)),
                partitions=tuple(PartitionEntry.from_json(p) for p in partitions),
                postprocess=_postprocess(data["postprocess"]) if "postprocess" in data else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed division manifest: {exc!r}") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> DivisionManifest:
        try:
            parsed = json.loads(data)
        except ValueError:
            raise InvalidArgument("division manifest is not JSON") from None
        return cls.from_json(parsed)


def _postprocess(data: Any) -> PostprocessSpec:
    from splitinfer.postprocess import PostprocessSpec

    return PostprocessSpec.from_json(data)
