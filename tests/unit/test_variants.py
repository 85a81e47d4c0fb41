"""Variants: fp16, bf16 and int8 programs stay close to fp32, shrink, and divide like any program."""

from __future__ import annotations

import pytest
import torch

from splitinfer.divider import LocalDivisionRunner, partition_at
from splitinfer.errors import InvalidArgument
from splitinfer.graph import ModelGraph, cut_points
from splitinfer.program import CompiledProgram, load_program, save_program
from splitinfer.variants import VARIANT_KINDS, make_variant, measure_top1
from splitinfer.zoo import ZOO, build

# Largest |variant - fp32| relative to the largest |fp32 output|.
TOLERANCE = {"fp32": 1e-6, "fp16": 5e-3, "bf16": 4e-2, "int8": 4e-2}


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_variant_is_close_to_fp32(name: str, kind: str) -> None:
    model, example = build(name)
    with torch.no_grad():
        expected = model(*example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    program = make_variant(model, example, kind)
    out = CompiledProgram(program)(dict(zip(program.input_names, example, strict=True)))
    for value, ref in zip(program.output_names, expected, strict=True):
        assert out[value].dtype == ref.dtype  # variants keep float32 at their edges
        assert float((out[value] - ref).abs().max()) <= TOLERANCE[kind] * float(ref.abs().max())


def test_variants_shrink_parameters_and_keep_flops() -> None:
    model, example = build("residual_cnn")
    sizes = {k: make_variant(model, example, k).param_bytes for k in VARIANT_KINDS}
    assert sizes["fp16"] < 0.55 * sizes["fp32"] and sizes["bf16"] < 0.55 * sizes["fp32"]
    assert sizes["int8"] < 0.3 * sizes["fp32"]
    flops = {k: ModelGraph.build(make_variant(model, example, k), example).total_flops for k in ("fp32", "int8")}
    assert flops["int8"] == pytest.approx(flops["fp32"], rel=0.05)


def test_int8_variant_divides_saves_and_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, example = build("transformer")
    program = make_variant(model, example, "int8")
    save_program(program, tmp_path)
    loaded = load_program(tmp_path)
    graph = ModelGraph.build(loaded, example)
    positions = [c.position for c in cut_points(graph)][1:-1]
    division = partition_at(graph, "transformer", positions[:: max(1, len(positions) // 4)])
    out = LocalDivisionRunner(division).run({loaded.input_names[0]: example[0]})
    whole = CompiledProgram(loaded)({loaded.input_names[0]: example[0]})
    assert torch.allclose(out[loaded.output_names[0]], whole[loaded.output_names[0]], atol=1e-5)


def test_unknown_variant_kind() -> None:
    model, example = build("tiny_cnn")
    with pytest.raises(InvalidArgument, match="unknown variant"):
        make_variant(model, example, "int4")


def test_measured_accuracy_counts_agreement_with_labels() -> None:
    model, example = build("tiny_cnn")
    program = make_variant(model, example, "fp32")
    inputs = torch.randn(10, 3, 32, 32)
    with torch.no_grad():
        labels = model(inputs).argmax(dim=1)
    exact = measure_top1(program, (inputs,), labels, source="10 random images labelled by fp32")
    assert exact.value == 1.0 and exact.measured and "measured" in str(exact)
    wrong = measure_top1(program, (inputs,), (labels + 1) % 10, source="shifted labels")
    assert wrong.value == 0.0
    int8 = measure_top1(make_variant(model, example, "int8"), (inputs,), labels, source="same set")
    assert 0.5 <= int8.value <= 1.0


@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_variants_keep_the_models_input_and_output_names(kind: str) -> None:
    model, example = build("two_in_two_out")
    reference = make_variant(model, example, "fp32")
    program = make_variant(model, example, kind)
    assert program.input_names == reference.input_names and program.output_names == reference.output_names
    out = CompiledProgram(program)(dict(zip(program.input_names, example, strict=True)))
    assert set(out) == set(reference.output_names)


class _TiedLM(torch.nn.Module):
    """An embedding whose weight the output projection reads too (GPT-2's tied lm_head), plus a conv reader."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8)
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.mix(self.embed(ids)))
        logits = torch.nn.functional.linear(h, self.embed.weight)  # the same weight, a second reader
        norm = self.embed.weight.abs().mean(dim=1)  # a third, neither matmul nor gather: dequantised there
        return {"logits": logits, "norm": norm}


def test_int8_quantises_a_tied_weight_once_and_rewrites_every_reader(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, ids = _TiedLM().eval(), torch.randint(0, 20, (1, 5))
    fp32 = make_variant(model, (ids,), "fp32")
    int8 = make_variant(model, (ids,), "int8")
    (embed,) = [name for name in fp32.params if "embed" in name]
    assert embed not in int8.params and f"{embed}__int8" in int8.params  # quantised once, no float copy kept
    assert sum(1 for n in int8.params if n.startswith(embed)) == 2  # the int8 tensor and its scales
    readers = [n for n in int8.nodes if any(r.startswith(embed) for r in n.refs())]
    assert {n.op for n in readers} >= {"aten.embedding.default", "aten._weight_int8pack_mm.default"}
    expected = model(ids)
    out = CompiledProgram(int8)({int8.input_names[0]: ids})
    assert torch.allclose(out["logits"], expected["logits"], atol=0.05)
    assert torch.allclose(out["norm"], expected["norm"], rtol=0.01)
    save_program(int8, tmp_path)  # and it saves, loads and divides like any program
    loaded = load_program(tmp_path)
    graph = ModelGraph.build(loaded, [ids])
    cuts = [c.position for c in cut_points(graph)][1:-1]
    divided = LocalDivisionRunner(partition_at(graph, "tied", cuts[:: max(1, len(cuts) // 3)])).run(
        {loaded.input_names[0]: ids}
    )
    assert torch.allclose(divided["logits"], out["logits"])


def test_half_precision_over_structured_outputs_and_keyword_inputs() -> None:
    torch.manual_seed(1)
    model, ids = _TiedLM().eval(), torch.randint(0, 20, (1, 5))
    for kind in ("fp16", "bf16"):
        program = make_variant(model, (), kind, {"ids": ids})
        assert program.input_names == ["ids"] and program.output_names == ["logits", "norm"]
        out = CompiledProgram(program)({"ids": ids})
        assert out["logits"].dtype == torch.float32
        assert torch.allclose(out["logits"], model(ids)["logits"], atol=0.05)


def test_a_variant_that_cannot_run_names_the_operator_and_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from splitinfer.program import interpreter

    real = interpreter.resolve_op

    def no_half_tanh(name: str):  # type: ignore[no-untyped-def]
        op = real(name)
        if name != "aten.tanh.default":
            return op

        def tanh(x: torch.Tensor) -> torch.Tensor:
            if x.dtype == torch.float16:
                raise RuntimeError("\"tanh_cpu\" not implemented for 'Half'")
            return op(x)

        return tanh

    monkeypatch.setattr(interpreter, "resolve_op", no_half_tanh)
    model, ids = _TiedLM().eval(), torch.randint(0, 20, (1, 5))
    with pytest.raises(
        InvalidArgument, match=r"fp16 variant of _TiedLM: operator aten\.tanh\.default .*module .*\(_TiedLM\).*Half"
    ):
        make_variant(model, (ids,), "fp16")
    with pytest.raises(InvalidArgument, match="int8 variant of Embedding: no float32 linear"):
        make_variant(torch.nn.Embedding(4, 2), (torch.tensor([1]),), "int8")
