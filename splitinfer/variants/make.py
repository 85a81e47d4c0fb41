"""Variants of one model: fp32, fp16, bf16 and int8 (weight-only, per-output-channel) programs.

* ``fp16`` / ``bf16``: the model's weights and arithmetic in half precision; inputs and outputs stay
  float32 (the program casts at its edges), so a variant is a drop-in replacement for the fp32 one.
* ``int8``: a program transform. Weights of linear and convolution layers are stored as int8 with one
  float32 scale per output channel (4x smaller artifacts and server memory). Linear layers run on
  ``aten._weight_int8pack_mm`` (int8 weights, float activations); convolutions dequantise their weights
  when they run. Activations stay float32: this is weight-only quantisation, not static int8 inference.
  ``torch.ao.quantization.quantize_dynamic`` is not used because its packed parameters cannot be exported
  by ``torch.export`` in torch 2.13 nor stored without pickle.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from splitinfer.errors import InvalidArgument
from splitinfer.program import Node, Program, Ref, ValueSpec, export_program

__all__ = ["VARIANT_KINDS", "make_variant", "quantize_int8"]

VARIANT_KINDS = ("fp32", "fp16", "bf16", "int8")


@register_flop_formula(torch.ops.aten._weight_int8pack_mm)
def _int8_mm_flops(x_shape: Sequence[int], w_shape: Sequence[int], *args: object, **kwargs: object) -> int:
    m, k = x_shape
    n = w_shape[0]
    return 2 * m * n * k


class _HalfPrecision(nn.Module):
    """Runs the wrapped model in ``dtype`` with float32 inputs and outputs."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> object:
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        out = self.model(*cast)
        if isinstance(out, tuple):
            return tuple(o.float() if o.is_floating_point() else o for o in out)
        return out.float() if out.is_floating_point() else out


def make_variant(model: nn.Module, example_inputs: Sequence[torch.Tensor], kind: str) -> Program:
    """The program of ``model`` as variant ``kind`` (one of VARIANT_KINDS). ``model`` is not modified."""
    if kind not in VARIANT_KINDS:
        raise InvalidArgument(f"unknown variant kind {kind!r}; known: {list(VARIANT_KINDS)}")
    reference = export_program(model, example_inputs)
    if kind == "fp32":
        return reference
    if kind == "int8":
        return quantize_int8(reference)
    dtype = torch.float16 if kind == "fp16" else torch.bfloat16
    half = export_program(_HalfPrecision(copy.deepcopy(model), dtype), example_inputs)
    # Variants of one model take and produce the same named tensors, so that callers can swap them.
    mapping = {
        **dict(zip(half.input_names, reference.input_names, strict=True)),
        **dict(zip(half.output_names, reference.output_names, strict=True)),
    }
    mapping = {k: v for k, v in mapping.items() if k != v}
    taken = set(half.value_specs()) | set(half.params) | {n.name for n in half.nodes}
    for clash in sorted((set(mapping.values()) & taken) - set(mapping)):
        aside = f"{clash}_{kind}"
        while aside in taken:
            aside += "_"
        mapping[clash] = aside  # an inner value that happens to bear a name the variant must expose
        taken.add(aside)
    return half.rename(mapping)


def _per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.clamp(torch.round(flat / scale[:, None]), -127, 127).to(torch.int8).reshape(weight.shape)
    return q, scale


def quantize_int8(program: Program) -> Program:
    """Rewrites linear and 2-d convolution layers of a float32 program to int8 weights (see module doc)."""
    params = dict(program.params)
    quantized: dict[str, tuple[str, str]] = {}

    def quantize(name: str) -> tuple[str, str]:
        if name not in quantized:
            q, scale = _per_channel(params.pop(name))
            params[f"{name}__int8"] = q
            params[f"{name}__scale"] = scale
            quantized[name] = (f"{name}__int8", f"{name}__scale")
        return quantized[name]

    def is_float_param(value: object) -> bool:
        return isinstance(value, Ref) and value.name in params and params[value.name].dtype == torch.float32

    specs = program.value_specs()
    nodes: list[Node] = []
    for node in program.nodes:
        out = node.outputs[0] if node.outputs else None
        if node.op == "aten.linear.default" and is_float_param(node.args[1]) and out is not None:
            x, weight = node.args[0], node.args[1]
            bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            assert isinstance(x, Ref) and isinstance(weight, Ref)
            q, scale = quantize(weight.name)
            in_spec = specs[x.name]
            k, n = in_spec.shape[-1], out.shape[-1]
            rows = _numel(in_spec.shape) // k
            flat = ValueSpec(f"{node.name}__in2d", torch.float32, (rows, k))
            mm = ValueSpec(f"{node.name}__mm", torch.float32, (rows, n))
            nodes.append(Node(flat.name, "aten.reshape.default", (x, [rows, k]), {}, (flat,)))
            nodes.append(
                Node(mm.name, "aten._weight_int8pack_mm.default", (Ref(flat.name), Ref(q), Ref(scale)), {}, (mm,))
            )
            if bias is not None:
                biased = ValueSpec(f"{node.name}__bias", torch.float32, (rows, n))
                nodes.append(Node(biased.name, "aten.add.Tensor", (Ref(mm.name), bias), {}, (biased,)))
                mm = biased
            nodes.append(Node(node.name, "aten.reshape.default", (Ref(mm.name), list(out.shape)), {}, node.outputs))
        elif node.op == "aten.conv2d.default" and is_float_param(node.args[1]):
            weight = node.args[1]
            assert isinstance(weight, Ref)
            shape = tuple(params[weight.name].shape)
            q, scale = quantize(weight.name)
            as_float = ValueSpec(f"{node.name}__wf", torch.float32, shape)
            scales = ValueSpec(f"{node.name}__ws", torch.float32, (shape[0], 1, 1, 1))
            dequant = ValueSpec(f"{node.name}__w", torch.float32, shape)
            nodes.append(Node(as_float.name, "aten._to_copy.default", (Ref(q),), {"dtype": torch.float32}, (as_float,)))
            nodes.append(Node(scales.name, "aten.reshape.default", (Ref(scale), list(scales.shape)), {}, (scales,)))
            nodes.append(Node(dequant.name, "aten.mul.Tensor", (Ref(as_float.name), Ref(scales.name)), {}, (dequant,)))
            args = (node.args[0], Ref(dequant.name), *node.args[2:])
            nodes.append(Node(node.name, node.op, args, node.kwargs, node.outputs))
        else:
            nodes.append(node)
    if not quantized:
        raise InvalidArgument("the program has no float32 linear or conv2d weights to quantise")
    return Program(program.inputs, program.outputs, tuple(nodes), params)


def _numel(shape: Sequence[int]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size
