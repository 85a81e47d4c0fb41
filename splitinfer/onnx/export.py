"""A partition's :class:`~splitinfer.program.Program` to an ONNX model.

The program is wrapped in a module that replays its ATen operations, exported with ``torch.export`` (an
ExportedProgram of exactly the partition), and converted with ``torch.onnx.export(..., dynamo=True)``.
The ONNX graph's inputs and outputs then carry the partition's tensor names; a name ONNX tooling cannot
spell safely (anything beyond ``[A-Za-z0-9_.]``) is renamed and the mapping recorded.

A symbolic batch dimension is tried first: view/reshape sizes that hard-code the exported batch are
rewritten to ``-1`` and the program is exported with a ``Dim`` on dimension 0 of every input. When the model
does not allow it (an op mixes the batch into another dimension, as attention's head split does), the export
is static and says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import onnx
import torch

from splitinfer.errors import InvalidArgument
from splitinfer.onnx.layout import add_layout_hints
from splitinfer.program import Program, Ref
from splitinfer.program.interpreter import resolve_op

__all__ = ["OPSET", "ExportedOnnx", "ProgramModule", "export_onnx", "onnx_name"]

#: Opset requested from the exporter (recorded per artifact from the model itself).
OPSET = 18
_SAFE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_RESHAPES = frozenset({"aten.view.default", "aten.reshape.default", "aten._unsafe_view.default"})
#: Largest batch a dynamic export admits (a bound keeps the exporter's shape reasoning finite).
MAX_EXPORT_BATCH = 4096


def onnx_name(name: str) -> str:
    """``name`` as an ONNX value name: itself when safe, otherwise with every other character as ``_``."""
    if _SAFE.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.]", "_", name)
    return cleaned if _SAFE.match(cleaned) else f"t_{cleaned}"


@dataclass(frozen=True, slots=True)
class ExportedOnnx:
    model: bytes
    opset: int
    #: Partition tensor name -> ONNX value name, for every input and output.
    names: Mapping[str, str]
    dynamic_batch: bool
    #: Why the batch dimension is static (empty when it is dynamic).
    static_reason: str = ""
    #: Inputs given a layout hint (see :mod:`splitinfer.onnx.layout`).
    layout_hints: tuple[str, ...] = ()


class ProgramModule(torch.nn.Module):
    """Replays a program's ATen operations (the same resolution as the interpreter) for ``torch.export``.

    ``batch``: when given, view/reshape sizes whose first entry equals it become ``-1`` so that a symbolic
    batch dimension can flow through a flatten.
    """

    def __init__(self, program: Program, batch: int | None = None) -> None:
        super().__init__()
        self.program = program
        self._param_attr: dict[str, str] = {}
        for i, (name, tensor) in enumerate(program.params.items()):
            attr = f"param_{i}"
            self.register_buffer(attr, tensor.detach().clone())
            self._param_attr[name] = attr
        self._steps = [(node, resolve_op(node.op)) for node in program.nodes]
        self._batch = batch

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, Any] = dict(zip(self.program.input_names, inputs, strict=True))
        for name, attr in self._param_attr.items():
            env[name] = getattr(self, attr)

        def load(value: Any) -> Any:
            if isinstance(value, Ref):
                return env[value.name]
            if isinstance(value, tuple):
                return tuple(load(v) for v in value)
            if isinstance(value, list):
                return [load(v) for v in value]
            return value

        for node, fn in self._steps:
            args = load(node.args)
            if (
                self._batch is not None
                and node.op in _RESHAPES
                and len(args) > 1
                and isinstance(args[1], list)
                and args[1]
                and args[1][0] == self._batch
            ):
                args = (args[0], [-1, *args[1][1:]], *args[2:])
            env[node.name] = fn(*args, **{k: load(v) for k, v in node.kwargs.items()})
        return tuple(env[s.name] for s in self.program.outputs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress and warnings on every call; keep them out of servers' logs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _int8pack_mm(x: Any, weight: Any, scales: Any) -> Any:
    """``aten._weight_int8pack_mm`` (the int8 variant's matrix product) in ONNX: dequantise, then MatMul."""
    from onnxscript import opset18 as op

    axis = op.Constant(value_ints=[1])
    dequantised = op.Mul(op.Cast(weight, to=onnx.TensorProto.FLOAT), op.Unsqueeze(scales, axis))  # type: ignore[arg-type]
    return op.MatMul(x, op.Transpose(dequantised, perm=[1, 0]))


def _to_onnx(exported: torch.export.ExportedProgram) -> onnx.ModelProto:
    program = torch.onnx.export(
        exported,
        dynamo=True,
        opset_version=OPSET,
        verbose=False,
        optimize=True,
        custom_translation_table={torch.ops.aten._weight_int8pack_mm.default: _int8pack_mm},
    )
    if program is None:
        raise InvalidArgument("torch.onnx.export returned no model")
    model: onnx.ModelProto = program.model_proto
    return model


def _rename(model: onnx.ModelProto, wanted: Mapping[str, str]) -> None:
    """Renames graph values ``old -> new`` in place; an internal value already called ``new`` moves aside."""
    graph = model.graph
    used: set[str] = {i.name for i in graph.input} | {o.name for o in graph.output}
    used.update(t.name for t in graph.initializer)
    for node in graph.node:
        used.update(node.input)
        used.update(node.output)
    mapping = dict(wanted)
    targets = set(mapping.values())
    for name in sorted(used & targets):
        if name in mapping:
            continue  # it is being renamed itself
        aside, k = f"{name}__inner", 0
        while aside in used or aside in targets:
            k += 1
            aside = f"{name}__inner{k}"
        mapping[name] = aside
        used.add(aside)

    def fix(name: str) -> str:
        return mapping.get(name, name)

    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise InvalidArgument(f"ONNX node {node.op_type} has a subgraph; renaming across it is unsupported")
        node.input[:] = [fix(n) for n in node.input]
        node.output[:] = [fix(n) for n in node.output]
    for values in (graph.input, graph.output, graph.value_info):
        for value in values:
            value.name = fix(value.name)
    for tensor in graph.initializer:
        tensor.name = fix(tensor.name)


def _example(program: Program, batch: int | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs of the program's exact shapes, or with dimension 0 set to ``batch``."""
    tensors = []
    for spec in program.inputs:
        shape = (batch, *spec.shape[1:]) if spec.shape and batch is not None else spec.shape
        if spec.dtype.is_floating_point:
            tensors.append(torch.randn(shape).to(spec.dtype))
        elif spec.dtype == torch.bool:
            tensors.append(torch.zeros(shape, dtype=torch.bool))
        else:
            tensors.append(torch.zeros(shape, dtype=spec.dtype))
    return tuple(tensors)


def _export_dynamic(program: Program) -> torch.export.ExportedProgram:
    batch = program.inputs[0].shape[0]
    module = ProgramModule(program, batch=batch)
    dim = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    # An example with a batch of 2: torch.export specialises size-1 dimensions, so batch 1 cannot be symbolic.
    example = _example(program, 2)
    return torch.export.export(module, example, dynamic_shapes={"inputs": tuple({0: dim} for _ in example)})


def _batch_reason(program: Program) -> str:
    """Why a symbolic batch is not even tried ("" when it may be)."""
    if not program.inputs:
        return "the partition has no inputs"
    shapes = [s.shape for s in [*program.inputs, *program.outputs]]
    if any(not s for s in shapes):
        return "a 0-d tensor crosses the partition boundary"
    batches = {s[0] for s in shapes}
    if len(batches) != 1:
        return f"inputs and outputs disagree on dimension 0 ({sorted(batches)})"
    return ""


def export_onnx(program: Program, *, dynamic_batch: bool = True, layout_hints: bool = True) -> ExportedOnnx:
    """The program as an ONNX model whose inputs and outputs carry its tensor names.

    ``layout_hints``: insert the identity pooling that lets onnxruntime's CPU layout pass fuse a residual
    block that starts at the partition's input (:func:`~splitinfer.onnx.layout.add_layout_hints`).

    Raises whatever the exporter raises when a model cannot be converted; the caller records it.
    """
    reason = _batch_reason(program) if dynamic_batch else "a static batch was asked for"
    exported = None
    if not reason:
        try:
            with _quiet():
                exported = _export_dynamic(program)
        except Exception as exc:  # the exporter's errors have no common base; each says why
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    with _quiet():
        if exported is None:
            exported = torch.export.export(ProgramModule(program), _example(program))
        model = _to_onnx(exported)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(graph_inputs) != len(program.inputs) or len(graph.output) != len(program.outputs):
        raise InvalidArgument(
            f"ONNX graph has {len(graph_inputs)} inputs and {len(graph.output)} outputs; "
            f"the partition has {len(program.inputs)} and {len(program.outputs)}"
        )
    names = {s.name: onnx_name(s.name) for s in [*program.inputs, *program.outputs]}
    if len(set(names.values())) != len(names):
        raise InvalidArgument(f"partition tensor names collide once made ONNX-safe: {sorted(names)}")
    wanted = {old: names[s.name] for old, s in zip(graph_inputs, program.inputs, strict=True)}
    wanted.update({o.name: names[s.name] for o, s in zip(graph.output, program.outputs, strict=True)})
    _rename(model, {k: v for k, v in wanted.items() if k != v})
    hinted = add_layout_hints(model) if layout_hints else []
    onnx.checker.check_model(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    return ExportedOnnx(model.SerializeToString(), int(opset), names, not reason, reason, tuple(hinted))
