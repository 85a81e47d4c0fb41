"""Layout hints at a partition's entry (splitinfer.onnx.layout): a residual block that starts at the
partition's input fuses into its convolutions on onnxruntime's CPU provider as in the whole model, the
outputs stay the interpreter's, and inputs the hint cannot help are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph
from splitinfer.onnx import export_onnx
from splitinfer.onnx.layout import add_layout_hints
from splitinfer.program import CompiledProgram, Program, export_program

CHANNELS = 32  # a multiple of onnxruntime's channel block on AVX2 (8) and AVX-512 (16)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(CHANNELS, CHANNELS // 2, 1)
        self.b = nn.Conv2d(CHANNELS // 2, CHANNELS // 2, 3, padding=1)
        self.c = nn.Conv2d(CHANNELS // 2, CHANNELS, 1)
        self.bn = nn.BatchNorm2d(CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.c(torch.relu(self.b(torch.relu(self.a(x))))))


class _Residual(nn.Module):
    """A stem, then identity residual blocks whose ReLU follows the Add (as ResNet's do)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.blocks = nn.ModuleList(_Block() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = torch.relu(block(x))
        return x


def _cut_after_first_add() -> tuple[Program, Program, dict[str, torch.Tensor]]:
    """Head and tail of the residual model cut after the first block's Add (before its ReLU), as the
    narrow cuts of a ResNet are; the tail's feeds from the interpreter."""
    model = _Residual().eval()
    x = torch.randn(1, 3, 16, 16)
    program = export_program(model, (x,))
    graph = ModelGraph.build(program, (x,))
    position = next(i for i, node in enumerate(graph.nodes) if "add" in node.op) + 1
    division = partition_at(graph, "residual", [position])
    head, tail = (division.partition_program(p.name) for p in division.partitions)
    values = CompiledProgram(head)({head.input_names[0]: x})
    return head, tail, {s.name: values[s.name] for s in tail.inputs}


def _session(model: bytes, optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _optimized_ops(model: bytes, path: Path) -> list[str]:
    _session(model, path)
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_a_block_at_the_partition_input_fuses_and_outputs_stay_the_interpreters(tmp_path: Path) -> None:
    head, tail, feeds = _cut_after_first_add()
    hinted = export_onnx(tail)
    plain = export_onnx(tail, layout_hints=False)
    assert hinted.layout_hints == tuple(tail.input_names)
    assert plain.layout_hints == ()
    assert export_onnx(head).layout_hints == ()  # the image feeds the stem convolution only

    reference = CompiledProgram(tail)(feeds)
    out_name = tail.outputs[0].name
    arrays = {hinted.names[k]: v.numpy() for k, v in feeds.items()}
    got = _session(hinted.model).run([hinted.names[out_name]], arrays)[0]
    np.testing.assert_allclose(got, reference[out_name].numpy(), rtol=1e-5, atol=1e-5)
    # The graph's inputs and outputs keep their names: the hint is invisible from outside.
    model = onnx.load_from_string(hinted.model)
    assert [i.name for i in model.graph.input if i.name in arrays] == list(arrays)

    plain_ops = _optimized_ops(plain.model, tmp_path / "plain.onnx")
    if "ReorderInput" not in plain_ops:
        pytest.skip("onnxruntime's blocked (NCHWc) layout is not used on this CPU")
    # Without the hint the skip-path Adds of the tail's two blocks stay outside the convolutions, each block
    # re-entering the layout.
    assert plain_ops.count("Add") == 2
    assert plain_ops.count("ReorderInput") == 2
    hinted_ops = _optimized_ops(hinted.model, tmp_path / "hinted.onnx")
    assert "Add" not in hinted_ops
    assert hinted_ops.count("ReorderInput") == 1
    assert hinted_ops.count("ReorderOutput") == 1


def _graph_model(shape: list[int], elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """``x -> Relu -> {Conv, Add}``: the residual entry the hint is for."""
    channels = shape[1]
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    weight = np.ones([channels, channels, *([1] * (len(shape) - 2))], dtype=dtype)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["c"]),
        helper.make_node("Add", ["c", "r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "entry",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
        initializer=[helper.make_tensor("w", elem_type, weight.shape, weight.flatten().tolist())],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("shape", "elem_type", "hinted"),
    [
        ([1, 32, 4, 4], TensorProto.FLOAT, True),
        (["batch", 32, 4, 4], TensorProto.FLOAT, True),
        ([1, 32, 4, 4], TensorProto.FLOAT16, False),  # the blocked layout is float32 only
        ([1, 12, 4, 4], TensorProto.FLOAT, False),  # not a multiple of the channel block
        ([1, 32, 4], TensorProto.FLOAT, False),  # not NCHW
    ],
)
def test_only_inputs_the_layout_pass_can_use_are_hinted(shape: list[int], elem_type: int, hinted: bool) -> None:
    model = _graph_model(shape, elem_type)
    assert add_layout_hints(model) == (["x"] if hinted else [])
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == (["AveragePool", "Relu", "Conv", "Add"] if hinted else ["Relu", "Conv", "Add"])


def test_an_input_feeding_convolutions_only_is_not_hinted() -> None:
    model = _graph_model([1, 32, 4, 4])
    model.graph.node[2].input[:] = ["c", "c"]  # the Add no longer reads the input's path
    assert add_layout_hints(model) == []


def test_the_hint_returns_its_input_exactly_on_the_blocked_path() -> None:
    """NaN and both infinities pass through the hint unchanged (a 1x1 max pool would turn -inf into
    -3.4e38 on onnxruntime's blocked path); the graph also exposes the hint's output to compare."""
    model = _graph_model([1, 32, 4, 4])
    add_layout_hints(model)
    hint = model.graph.node[0].output[0]
    model.graph.output.append(helper.make_tensor_value_info(hint, TensorProto.FLOAT, [1, 32, 4, 4]))
    x = np.random.default_rng(0).standard_normal((1, 32, 4, 4)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 1, 1, 1], x[0, 2, 2, 2] = np.nan, np.inf, -np.inf
    got = _session(model.SerializeToString()).run([hint], {"x": x})[0]
    np.testing.assert_array_equal(got, x)
