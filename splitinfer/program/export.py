"""``torch.export`` to :class:`~splitinfer.program.model.Program`."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from splitinfer.errors import InvalidArgument
from splitinfer.program.model import Node, Program, Ref, ValueSpec

__all__ = ["export_program", "from_exported"]


def export_program(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> Program:
    """Exports ``model`` (in eval mode) with ``torch.export`` and converts the result."""
    model = model.eval()
    with torch.no_grad():
        exported = torch.export.export(model, tuple(example_inputs))
    return from_exported(exported)


def _spec(name: str, value: Any) -> ValueSpec:
    if not isinstance(value, torch.Tensor):
        raise InvalidArgument(f"value {name!r} is not a tensor ({type(value).__name__}); only tensors can cross")
    return ValueSpec(name, value.dtype, tuple(int(d) for d in value.shape))


def _convert_arg(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return Ref(value.name)
    if isinstance(value, list | tuple):
        return tuple(_convert_arg(v) for v in value) if isinstance(value, tuple) else [_convert_arg(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.dtype | torch.device | torch.layout | torch.memory_format):
        return value
    raise InvalidArgument(f"unsupported argument of type {type(value).__name__} in the exported graph: {value!r}")


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        namespace = target.namespace
        if namespace != "aten":
            raise InvalidArgument(f"operator {target} is outside the aten namespace; splitinfer runs aten ops only")
        return f"aten.{target._schema.name.split('::', 1)[1]}.{target._overloadname}"
    raise InvalidArgument(f"unsupported call target {target!r} in the exported graph")


def from_exported(exported: ExportedProgram) -> Program:
    """Flattens an exported program into a Program with its parameters, buffers and constants."""
    signature = exported.graph_signature
    state = dict(exported.state_dict)
    constants = dict(exported.constants)
    params: dict[str, torch.Tensor] = {}
    inputs: list[ValueSpec] = []
    for spec in signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            continue
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            params[name] = state[spec.target].detach() if spec.target in state else constants[spec.target]
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            params[name] = constants[spec.target].detach()
        else:
            raise InvalidArgument(f"unsupported graph input kind {spec.kind} for {name!r}")
    nodes: list[Node] = []
    outputs: list[ValueSpec] = []
    for fx_node in exported.graph.nodes:
        if fx_node.op == "placeholder":
            if fx_node.name not in params:
                inputs.append(_spec(fx_node.name, fx_node.meta.get("val")))
        elif fx_node.op == "call_function":
            val = fx_node.meta.get("val")
            if val is None and not fx_node.users:
                continue  # a metadata assertion (e.g. aten._assert_tensor_metadata): shapes are checked at inputs
            if isinstance(val, list | tuple):
                node_outputs = tuple(
                    _spec(f"{fx_node.name}[{i}]", v) for i, v in enumerate(val) if isinstance(v, torch.Tensor)
                )
            else:
                node_outputs = (_spec(fx_node.name, val),)
            nodes.append(
                Node(
                    name=fx_node.name,
                    op=_op_name(fx_node.target),
                    args=tuple(_convert_arg(a) for a in fx_node.args),
                    kwargs={k: _convert_arg(v) for k, v in fx_node.kwargs.items()},
                    outputs=node_outputs,
                )
            )
        elif fx_node.op == "output":
            user_outputs = [s for s in signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
            if len(user_outputs) != len(signature.output_specs):
                raise InvalidArgument("the model mutates its buffers in forward; export it in eval mode")
            by_name = {n.name: n for n in nodes}
            for spec in user_outputs:
                name = spec.arg.name
                if name not in by_name:
                    raise InvalidArgument(f"output {name!r} is not computed by an operation (a pass-through input)")
                outputs.append(by_name[name].outputs[0])
    return Program(inputs=tuple(inputs), outputs=tuple(outputs), nodes=tuple(nodes), params=params)
