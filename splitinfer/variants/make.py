"""Variants of one model: fp32, fp16, bf16 and int8 (weight-only, per-output-channel) programs.

* ``fp16`` / ``bf16``: the model's weights and arithmetic in half precision; inputs and outputs stay
  float32 (the program casts at its edges), so a variant is a drop-in replacement for the fp32 one.
* ``int8``: a program transform. Weights of linear, ``addmm`` (Hugging Face's Conv1D) and convolution
  layers are stored as int8 with one float32 scale per output channel (4x smaller artifacts and server
  memory). Matrix products run on ``aten._weight_int8pack_mm`` (int8 weights, float activations);
  convolutions and other readers dequantise their weights when they run; embeddings gather int8 rows.
  A weight read by several nodes (tied embeddings) is quantised once and every reader rewritten.
  Activations stay float32: this is weight-only quantisation, not static int8 inference.
  ``torch.ao.quantization.quantize_dynamic`` is not used because its packed parameters cannot be exported
  by ``torch.export`` in torch 2.13 nor stored without pickle.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from splitinfer.errors import InvalidArgument
from splitinfer.program import Node, Program, Ref, ValueSpec, export_program
from splitinfer.program.export import example_feeds
from splitinfer.program.interpreter import run_checked

__all__ = ["VARIANT_KINDS", "make_variant", "quantize_int8"]

VARIANT_KINDS = ("fp32", "fp16", "bf16", "int8")


@register_flop_formula(torch.ops.aten._weight_int8pack_mm)
def _int8_mm_flops(x_shape: Sequence[int], w_shape: Sequence[int], *args: object, **kwargs: object) -> int:
    m, k = x_shape
    n = w_shape[0]
    return 2 * m * n * k


def _to_float32(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    return value


class _HalfPrecision(nn.Module):
    """Runs the wrapped model in ``dtype`` with float32 inputs and outputs, over any pytree of either."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def _cast(self, value: object) -> object:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(self.dtype)
        return value

    def forward(self, *args: object, **kwargs: object) -> object:
        args, kwargs = pytree.tree_map(self._cast, (args, kwargs))
        return pytree.tree_map(_to_float32, self.model(*args, **kwargs))


def make_variant(
    model: nn.Module,
    example_inputs: Sequence[object],
    kind: str,
    example_kwargs: Mapping[str, object] | None = None,
) -> Program:
    """The program of ``model`` as variant ``kind`` (one of VARIANT_KINDS). ``model`` is not modified.

    The variant is run once on the example; InvalidArgument naming the operator and module when it cannot be
    built or does not run (an operator without a half-precision kernel on this machine, say).
    """
    if kind not in VARIANT_KINDS:
        raise InvalidArgument(f"unknown variant kind {kind!r}; known: {list(VARIANT_KINDS)}")
    name = type(model).__name__
    reference = export_program(model, example_inputs, example_kwargs)
    if kind == "fp32":
        return reference
    if kind == "int8":
        variant = quantize_int8(reference, name)
    else:
        dtype = torch.float16 if kind == "fp16" else torch.bfloat16
        try:
            half = export_program(_HalfPrecision(copy.deepcopy(model), dtype), example_inputs, example_kwargs)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{kind} variant of {name}: {exc}") from exc
        # Variants of one model take and produce the same named tensors, so that callers can swap them.
        mapping = {
            **dict(zip(half.input_names, reference.input_names, strict=True)),
            **dict(zip(half.output_names, reference.output_names, strict=True)),
        }
        variant = half.rename_exposed(mapping, suffix=kind)
    run_checked(variant, example_feeds(variant, example_inputs, example_kwargs), f"{kind} variant of {name}")
    return variant


def _per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.clamp(torch.round(flat / scale[:, None]), -127, 127).to(torch.int8).reshape(weight.shape)
    return q, scale


def _int8_readers(program: Program) -> dict[str, bool]:
    """Parameters to quantise: float32 weights of a linear, a 2-d convolution or an ``addmm`` (Hugging Face's
    Conv1D), by name, with True when the int8 copy is stored transposed (addmm reads its weight as [K, N])."""
    params = program.params
    chosen: dict[str, bool] = {}
    for node in program.nodes:
        weight, transposed = None, False
        if node.op in ("aten.linear.default", "aten.conv2d.default") and len(node.args) > 1:
            weight = node.args[1]
        elif node.op == "aten.addmm.default" and len(node.args) > 2 and not node.kwargs:
            weight, transposed = node.args[2], True
        if not (isinstance(weight, Ref) and weight.name in params and params[weight.name].dtype == torch.float32):
            continue
        if params[weight.name].dim() < 2:
            continue
        chosen.setdefault(weight.name, transposed)  # a weight read both ways keeps its first layout
    return chosen


def quantize_int8(program: Program, model: str = "model") -> Program:
    """Rewrites linear, addmm and 2-d convolution layers of a float32 program to int8 weights (module doc).

    Each weight is quantised once, however many nodes read it (tied embeddings, a head reused across
    levels); every reader is rewritten: matrix products run on the int8 copy, an embedding gathers int8 rows
    and their scales, and any other reader dequantises its own copy where it runs (so a partition never
    needs a tensor from another one to read a weight).
    """
    params = dict(program.params)
    layouts = _int8_readers(program)
    if not layouts:
        raise InvalidArgument(f"int8 variant of {model}: no float32 linear, addmm or conv2d weights to quantise")
    quantized: dict[str, tuple[str, str]] = {}
    shapes = {name: tuple(params[name].shape) for name in layouts}
    for name, transposed in layouts.items():
        weight = params.pop(name)
        q, scale = _per_channel(weight.t() if transposed else weight)
        params[f"{name}__int8"] = q.contiguous()
        params[f"{name}__scale"] = scale
        quantized[name] = (f"{name}__int8", f"{name}__scale")

    specs = program.value_specs()
    nodes: list[Node] = []
    module = ""  # the module of the node being rewritten: its replacement nodes inherit it

    def add(name: str, op: str, args: tuple[object, ...], kwargs: dict[str, object], spec: ValueSpec) -> Ref:
        nodes.append(Node(name, op, args, kwargs, (spec,), module))
        return Ref(name)

    def int8_matmul(node: Node, x: Ref, weight: str, bias: object) -> None:
        q, scale = quantized[weight]
        out = node.outputs[0]
        in_spec = specs[x.name]
        k, n = in_spec.shape[-1], out.shape[-1]
        rows = _numel(in_spec.shape) // k
        flat = add(
            f"{node.name}__in2d", "aten.reshape.default", (x, [rows, k]), {}, _f32(f"{node.name}__in2d", (rows, k))
        )
        mm = add(
            f"{node.name}__mm",
            "aten._weight_int8pack_mm.default",
            (flat, Ref(q), Ref(scale)),
            {},
            _f32(f"{node.name}__mm", (rows, n)),
        )
        if bias is not None:
            mm = add(f"{node.name}__bias", "aten.add.Tensor", (mm, bias), {}, _f32(f"{node.name}__bias", (rows, n)))
        nodes.append(Node(node.name, "aten.reshape.default", (mm, list(out.shape)), {}, node.outputs, module))

    def dequantised(node: Node, weight: str) -> Ref:
        q, scale = quantized[weight]
        stored = (shapes[weight][1], shapes[weight][0]) if layouts[weight] else shapes[weight]
        as_float = add(
            f"{node.name}__{weight}_f",
            "aten._to_copy.default",
            (Ref(q),),
            {"dtype": torch.float32},
            _f32(f"{node.name}__{weight}_f", stored),
        )
        scale_shape = [stored[0], *([1] * (len(stored) - 1))]
        scales = add(
            f"{node.name}__{weight}_s",
            "aten.reshape.default",
            (Ref(scale), scale_shape),
            {},
            _f32(f"{node.name}__{weight}_s", tuple(scale_shape)),
        )
        value = add(
            f"{node.name}__{weight}_w",
            "aten.mul.Tensor",
            (as_float, scales),
            {},
            _f32(f"{node.name}__{weight}_w", stored),
        )
        if layouts[weight]:
            value = add(
                f"{node.name}__{weight}_wt",
                "aten.transpose.int",
                (value, 0, 1),
                {},
                _f32(f"{node.name}__{weight}_wt", shapes[weight]),
            )
        return value

    def int8_embedding(node: Node, weight: str, indices: Ref) -> None:
        q, scale = quantized[weight]
        out = node.outputs[0]
        rows = add(
            f"{node.name}__rows",
            "aten.embedding.default",
            (Ref(q), indices),
            {},
            ValueSpec(f"{node.name}__rows", torch.int8, out.shape),
        )
        rows_f = add(
            f"{node.name}__rows_f",
            "aten._to_copy.default",
            (rows,),
            {"dtype": torch.float32},
            _f32(f"{node.name}__rows_f", out.shape),
        )
        scale_shape = [*out.shape[:-1], 1]
        scales = add(
            f"{node.name}__scales",
            "aten.index.Tensor",
            (Ref(scale), [indices]),
            {},
            _f32(f"{node.name}__scales", tuple(out.shape[:-1])),
        )
        scales = add(
            f"{node.name}__scales2",
            "aten.unsqueeze.default",
            (scales, -1),
            {},
            _f32(f"{node.name}__scales2", tuple(scale_shape)),
        )
        nodes.append(Node(node.name, "aten.mul.Tensor", (rows_f, scales), {}, node.outputs, module))

    def replace_refs(value: object, table: dict[str, Ref]) -> object:
        if isinstance(value, Ref):
            return table.get(value.name, value)
        if isinstance(value, tuple):
            return tuple(replace_refs(v, table) for v in value)
        if isinstance(value, list):
            return [replace_refs(v, table) for v in value]
        return value

    for node in program.nodes:
        module = node.module
        reads = [r for r in node.refs() if r in quantized]
        if not reads:
            nodes.append(node)
            continue
        args = node.args
        single = len(node.outputs) == 1 and node.outputs[0].name == node.name
        weight_arg = args[1] if len(args) > 1 else None
        if (
            node.op == "aten.linear.default"
            and single
            and isinstance(weight_arg, Ref)
            and weight_arg.name in quantized
            and not layouts[weight_arg.name]
            and isinstance(args[0], Ref)
            and reads == [weight_arg.name]
        ):
            bias = args[2] if len(args) > 2 else node.kwargs.get("bias")
            int8_matmul(node, args[0], weight_arg.name, bias)
        elif (
            node.op == "aten.addmm.default"
            and single
            and len(args) == 3
            and isinstance(args[2], Ref)
            and args[2].name in quantized
            and layouts[args[2].name]
            and isinstance(args[1], Ref)
            and reads == [args[2].name]
        ):
            int8_matmul(node, args[1], args[2].name, args[0])
        elif (
            node.op == "aten.embedding.default"
            and single
            and len(args) == 2
            and isinstance(args[0], Ref)
            and args[0].name in quantized
            and not layouts[args[0].name]
            and isinstance(args[1], Ref)
            and len(shapes[args[0].name]) == 2
        ):
            int8_embedding(node, args[0].name, args[1])
        else:
            table = {weight: dequantised(node, weight) for weight in reads}
            new_args = tuple(replace_refs(a, table) for a in args)
            new_kwargs = {k: replace_refs(v, table) for k, v in node.kwargs.items()}
            nodes.append(Node(node.name, node.op, new_args, new_kwargs, node.outputs, module))
    return Program(program.inputs, program.outputs, tuple(nodes), params)


def _f32(name: str, shape: Sequence[int]) -> ValueSpec:
    return ValueSpec(name, torch.float32, tuple(int(d) for d in shape))


def _numel(shape: Sequence[int]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size
