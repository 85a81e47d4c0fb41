"""Programs on disk: ``program.json`` (graph, no code) and ``weights.safetensors`` (tensors, no pickle).

Nothing here executes data: the graph is JSON whose operators resolve only to the allow-listed
``torch.ops.aten`` overloads (:mod:`splitinfer.program.operators`), and tensors load through safetensors.
A program written with another torch release or operator set is refused. Files are checked against
their sha256 before they are parsed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.program.interpreter import resolve_op
from splitinfer.program.model import Node, Program, Ref, ValueSpec
from splitinfer.program.operators import OPERATOR_SET, check_compatible, check_operator

__all__ = ["FORMAT", "load_program", "program_from_json", "program_to_json", "save_program", "sha256_file"]

#: Version 2 records the torch version, the operator set and the operators used (version 1 did not).
FORMAT = "splitinfer.program/2"
GRAPH_FILE = "program.json"
WEIGHTS_FILE = "weights.safetensors"

_DTYPES = {
    str(t).removeprefix("torch."): t
    for t in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
        torch.complex64,
    )
}
_LAYOUTS = {"strided": torch.strided}
_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "preserve_format": torch.preserve_format,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise InvalidArgument(f"unknown dtype {name!r}") from None


def _encode(value: Any) -> Any:
    if isinstance(value, Ref):
        return {"ref": value.name}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, torch.dtype):
        return {"dtype": dtype_name(value)}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) != 1:
            raise InvalidArgument(f"malformed argument {value!r}")
        ((kind, payload),) = value.items()
        if kind == "ref":
            return Ref(str(payload))
        if kind == "tuple":
            return tuple(_decode(v) for v in payload)
        if kind == "float" and payload in ("inf", "-inf", "nan"):
            return float(payload)
        if kind == "dtype":
            return parse_dtype(payload)
        if kind == "device":
            return torch.device(payload)
        if kind == "layout" and payload in _LAYOUTS:
            return _LAYOUTS[payload]
        if kind == "memory_format" and payload in _FORMATS:
            return _FORMATS[payload]
        raise InvalidArgument(f"malformed argument {value!r}")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise InvalidArgument(f"malformed argument {value!r}")


def _spec_to_json(spec: ValueSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": dtype_name(spec.dtype), "shape": list(spec.shape)}


def _spec_from_json(data: dict[str, Any]) -> ValueSpec:
    return ValueSpec(str(data["name"]), parse_dtype(data["dtype"]), tuple(int(d) for d in data["shape"]))


def program_to_json(program: Program) -> dict[str, Any]:
    """The graph of a program as JSON-ready data (parameters listed by name, stored separately), with the
    torch version and operator set it was written with and the operators it uses."""
    return {
        "format": FORMAT,
        "torch": torch.__version__,
        "operator_set": OPERATOR_SET,
        "operators": sorted({n.op for n in program.nodes}),
        "inputs": [_spec_to_json(s) for s in program.inputs],
        "outputs": [_spec_to_json(s) for s in program.outputs],
        "params": sorted(program.params),
        "nodes": [
            {
                "name": n.name,
                "op": n.op,
                "args": [_encode(a) for a in n.args],
                "kwargs": {k: _encode(v) for k, v in n.kwargs.items()},
                "outputs": [_spec_to_json(s) for s in n.outputs],
            }
            for n in program.nodes
        ],
    }


def program_from_json(data: dict[str, Any], params: dict[str, torch.Tensor]) -> Program:
    """Rebuilds a program from its JSON graph and its parameters; InvalidArgument for malformed data."""
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InvalidArgument(f"program format is {str(found)[:40]!r}, expected {FORMAT!r}")
        check_compatible(data.get("torch"), data.get("operator_set"))  # type: ignore[arg-type]
        used = {str(n["op"]) for n in data["nodes"]}
        for op in sorted(used):
            check_operator(op)  # refuse unknown operators at load time, not at the first request
        if sorted(used) != data.get("operators"):
            raise InvalidArgument("program's operator record does not match the operators its nodes use")
        missing = sorted(set(data["params"]) - set(params))
        if missing:
            raise InvalidArgument(f"program needs parameters missing from the weights: {missing[:5]}")
        nodes = []
        for n in data["nodes"]:
            resolve_op(n["op"])
            nodes.append(
                Node(
                    name=str(n["name"]),
                    op=str(n["op"]),
                    args=tuple(_decode(a) for a in n["args"]),
                    kwargs={str(k): _decode(v) for k, v in n["kwargs"].items()},
                    outputs=tuple(_spec_from_json(s) for s in n["outputs"]),
                )
            )
        return Program(
            inputs=tuple(_spec_from_json(s) for s in data["inputs"]),
            outputs=tuple(_spec_from_json(s) for s in data["outputs"]),
            nodes=tuple(nodes),
            params={k: params[k] for k in data["params"]},
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"malformed program graph: {exc!r}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_program(program: Program, directory: Path) -> dict[str, str]:
    """Writes the program into ``directory``; returns the sha256 of each file, by file name."""
    directory.mkdir(parents=True, exist_ok=True)
    graph_path = directory / GRAPH_FILE
    graph_path.write_text(json.dumps(program_to_json(program), indent=1, sort_keys=True))
    weights_path = directory / WEIGHTS_FILE
    tensors = {k: v.detach().contiguous() for k, v in program.params.items()}
    safetensors.torch.save_file(tensors, str(weights_path))
    return {GRAPH_FILE: sha256_file(graph_path), WEIGHTS_FILE: sha256_file(weights_path)}


def load_program(directory: Path, sha256: dict[str, str] | None = None) -> Program:
    """Loads a program, first checking each file against ``sha256`` (by file name) when given.

    NotFound when a file is missing; FailedPrecondition when a checksum differs (the artifact was altered);
    InvalidArgument when the contents are malformed. Nothing is half-loaded: the program is returned whole
    or not at all.
    """
    paths = {name: directory / name for name in (GRAPH_FILE, WEIGHTS_FILE)}
    for name, path in paths.items():
        if not path.is_file():
            raise NotFound(f"program file {path} does not exist")
        if sha256 is not None:
            actual = sha256_file(path)
            if sha256.get(name) != actual:
                raise FailedPrecondition(
                    f"{path}: sha256 {actual} does not match the expected {sha256.get(name)}; refusing to load it"
                )
    try:
        data = json.loads(paths[GRAPH_FILE].read_text())
        params = safetensors.torch.load_file(str(paths[WEIGHTS_FILE]))
    except (ValueError, OSError, safetensors.SafetensorError) as exc:
        raise InvalidArgument(f"program in {directory} is malformed: {exc}") from None
    return program_from_json(data, params)
