"""``torch.export`` to :class:`~splitinfer.program.model.Program`.

Inputs may be positional tensors, keyword tensors (``example_kwargs``) and dicts, lists or tuples of tensors:
the program's inputs are the flattened leaves, named as ``torch.export`` names them (``input_ids``,
``batch_pixels``). Outputs may be any pytree of tensors: a tensor or a tuple of tensors keeps the names of
the operations that compute them; outputs with keys (dicts, dataclasses such as Hugging Face's
``ModelOutput``, named tuples) are named by their key path (``last_hidden_state``, ``boxes.0``), so that
every variant and every export of one model exposes the same stable names.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from splitinfer.errors import InvalidArgument
from splitinfer.program.model import Node, Program, Ref, ValueSpec
from splitinfer.program.operators import ALLOWED_OPERATORS, OPERATOR_SET

__all__ = ["example_feeds", "export_program", "flatten_example", "from_exported"]


def export_program(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] = (),
    example_kwargs: Mapping[str, Any] | None = None,
) -> Program:
    """Exports ``model`` (in eval mode) with ``torch.export`` and converts the result.

    InvalidArgument naming the failure when the model cannot be exported (data-dependent control flow,
    non-tensor outputs): such parts belong in a post-processing stage, outside the program.
    """
    model = model.eval()
    try:
        with torch.no_grad():
            exported = torch.export.export(model, tuple(example_inputs), dict(example_kwargs or {}))
    except InvalidArgument:
        raise
    except Exception as exc:  # torch raises many unrelated types here; the user needs the message
        text = str(exc).strip().splitlines()
        raise InvalidArgument(
            f"{type(model).__name__} cannot be exported with torch.export: {type(exc).__name__}: "
            f"{text[0] if text else ''}"[:500]
        ) from exc
    return from_exported(exported)


def flatten_example(example_inputs: Sequence[Any] = (), example_kwargs: Mapping[str, Any] | None = None) -> list[Any]:
    """The leaves of ``(args, kwargs)`` in the order an export of them names its inputs."""
    leaves, _ = pytree.tree_flatten((tuple(example_inputs), dict(example_kwargs or {})))
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def example_feeds(
    program: Program, example_inputs: Sequence[Any] = (), example_kwargs: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The program's named inputs for one example call ``model(*example_inputs, **example_kwargs)``."""
    leaves = flatten_example(example_inputs, example_kwargs)
    if len(leaves) != len(program.inputs):
        raise InvalidArgument(f"the example has {len(leaves)} tensors; the program takes {len(program.inputs)}")
    return dict(zip(program.input_names, leaves, strict=True))


def _spec(name: str, value: Any) -> ValueSpec:
    if not isinstance(value, torch.Tensor):
        raise InvalidArgument(f"value {name!r} is not a tensor ({type(value).__name__}); only tensors can cross")
    if not all(isinstance(d, int) for d in value.shape):
        raise InvalidArgument(
            f"value {name!r} has a data-dependent shape {list(value.shape)}; splitinfer programs have static "
            "shapes: put the data-dependent end of the model in a post-processing stage (splitinfer.postprocess)"
        )
    return ValueSpec(name, value.dtype, tuple(int(d) for d in value.shape))


def _convert_arg(value: Any, alias: Mapping[str, str] | None = None) -> Any:
    if isinstance(value, torch.fx.Node):
        return Ref(alias.get(value.name, value.name) if alias else value.name)
    if isinstance(value, list | tuple):
        items = [_convert_arg(v, alias) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
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
    # A tied weight (GPT-2's lm_head and token embedding) is one tensor under two names: keep one parameter
    # and point every reader at it, so that the tie survives saving, cutting and quantisation.
    alias: dict[str, str] = {}
    first: dict[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in list(params.items()):
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in first:
            alias[name] = first[key]
            del params[name]
        else:
            first[key] = name
    nodes: list[Node] = []
    outputs: list[ValueSpec] = []
    for fx_node in exported.graph.nodes:
        if fx_node.op == "placeholder":
            if fx_node.name not in params and fx_node.name not in alias:
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
            op = _op_name(fx_node.target)
            if op not in ALLOWED_OPERATORS:
                raise InvalidArgument(
                    f"operator {op} (node {fx_node.name!r}, module {_module_path(fx_node) or 'unknown'}) is not on "
                    f"splitinfer's allow-list of vetted operators ({OPERATOR_SET}, splitinfer/program/operators.py, "
                    "grown with a test per model family); a data-dependent end of a model belongs in a "
                    "post-processing stage (splitinfer.postprocess)"
                )
            nodes.append(
                Node(
                    name=fx_node.name,
                    op=op,
                    args=tuple(_convert_arg(a, alias) for a in fx_node.args),
                    kwargs={k: _convert_arg(v, alias) for k, v in fx_node.kwargs.items()},
                    outputs=node_outputs,
                    module=_module_path(fx_node),
                )
            )
        elif fx_node.op == "output":
            user_outputs = [s for s in signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
            if len(user_outputs) != len(signature.output_specs):
                raise InvalidArgument("the model mutates its buffers in forward; export it in eval mode")
            by_name = {n.name: n for n in nodes}
            input_specs = {s.name: s for s in inputs}
            seen: set[str] = set()
            for spec in user_outputs:
                name = getattr(spec.arg, "name", None)
                if name is None:
                    raise InvalidArgument(f"output {spec.arg!r} is a constant, not a tensor the model computes")
                if name in input_specs or name in params or name in seen:
                    # A pass-through or repeated output: a copy gives it a value of its own to name and send.
                    source = input_specs.get(name) or (by_name[name].outputs[0] if name in by_name else None)
                    if source is None:
                        source = ValueSpec(name, params[name].dtype, tuple(params[name].shape))
                    copy_name = _fresh(f"{name}_out", by_name, input_specs, params)
                    copied = ValueSpec(copy_name, source.dtype, source.shape)
                    node = Node(copy_name, "aten.clone.default", (Ref(name),), {}, (copied,))
                    nodes.append(node)
                    by_name[copy_name] = node
                    name = copy_name
                if name not in by_name or len(by_name[name].outputs) != 1:
                    raise InvalidArgument(f"output {name!r} is not a tensor computed by an operation")
                seen.add(name)
                outputs.append(by_name[name].outputs[0])
    program = Program(inputs=tuple(inputs), outputs=tuple(outputs), nodes=tuple(nodes), params=params)
    return _name_outputs(program, exported.call_spec.out_spec)


def _module_path(fx_node: torch.fx.Node) -> str:
    """The innermost module an exported node came from, with its class: ``encoder.layer.1.attn (Attention)``."""
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, kind = list(stack.values())[-1]
    kind_name = getattr(kind, "__name__", None) or str(kind).rsplit(".", 1)[-1].strip("'>")
    path = re.sub(r"^L\['self'\]\.?|^L__self__\.?", "", str(path))
    return f"{path or '(root)'} ({kind_name})"


def _fresh(base: str, *taken: Mapping[str, Any]) -> str:
    name = base
    while any(name in t for t in taken):
        name += "_"
    return name


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return re.sub(r"[^A-Za-z0-9_]", "_", str(getattr(entry, attr)))
    return re.sub(r"[^A-Za-z0-9_]", "_", str(entry))


def output_names(out_spec: pytree.TreeSpec | None) -> list[str] | None:
    """Key-path names of the output leaves, or None when the outputs have no keys (a tensor, a tuple)."""
    if out_spec is None:
        return None
    skeleton = pytree.tree_unflatten(list(range(out_spec.num_leaves)), out_spec)
    paths, _ = pytree.tree_flatten_with_path(skeleton)
    keyed = any(not isinstance(e, pytree.SequenceKey) for path, _ in paths for e in path)
    if not keyed:
        return None
    return [".".join(_key_name(e) for e in path) or "output" for path, _ in paths]


def _name_outputs(program: Program, out_spec: pytree.TreeSpec | None) -> Program:
    names = output_names(out_spec)
    if names is None or len(names) != len(program.outputs):
        return program
    mapping = {spec.name: new for spec, new in zip(program.outputs, names, strict=True) if spec.name != new}
    return program.rename_exposed(mapping)
