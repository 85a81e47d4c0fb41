"""Layout hints at a partition's entry, so that onnxruntime's CPU layout pass reaches across the cut.

onnxruntime's CPU provider (graph optimisation level "all") rewrites convolutions and the operations
around them to a blocked channel layout (NCHWc: ``ReorderInput`` once, then blocked ``Conv`` with the
residual ``Add`` and the ``Relu`` fused in, ``ReorderOutput`` at the end). It converts an ``Add`` only when
*every* input already is the output of a blocked node, and a graph input never is: the reordered copy it
makes for the first convolution is not offered to the other consumers. A residual network cut after a
block (as narrow cuts are) starts each partition with ``input -> Relu -> {Conv..., Add}``; the skip-path
``Add`` then stays in plain NCHW, so does the ``Relu`` after it, the next block's input, its ``Add``... up to
the next projection shortcut. Measured on split ResNet-50@224 (1 thread): the middle partition ran three
such blocks unfused (``ReorderOutput``/``Add``/``Relu``/``ReorderInput`` each, 1.7 ms of 20), the last one four.

The hint: an identity ``AveragePool`` (kernel 1x1, stride 1, no padding) between the input and its
consumers. The layout pass converts pooling, so the input enters the blocked layout once, the tensors
derived from it are blocked outputs, and the ``Add``s fuse into their convolutions as in the whole model.
A 1x1 average is the value itself (a sum of one term divided by one): NaN and both infinities come back
unchanged; only a negative zero may come back as positive zero (0 + -0 = +0), which compares equal to it.
(A 1x1 ``MaxPool`` would do the same for the layout, but onnxruntime's blocked max pool starts from the
lowest finite float and returns -inf as -3.4e38.) Where no layout pass runs the hint costs one copy.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

__all__ = ["add_layout_hints"]

#: Element-wise one-input operations the layout pass keeps in the blocked layout (looked through).
_UNARY = frozenset({"Relu", "Clip", "Sigmoid", "LeakyRelu", "HardSigmoid", "Tanh", "HardSwish"})
#: Operations the layout pass converts only when every input is already blocked.
_NEEDS_BLOCKED = frozenset({"Add", "Sum", "Mul", "Concat"})
#: The narrowest channel block of onnxruntime's CPU kernels (8 on AVX2, 16 on AVX-512); other channel
#: counts are not converted, so a hint would only add a copy.
_CHANNEL_BLOCK = 8


def _reaches(graph: onnx.GraphProto, name: str) -> set[str]:
    """Operation types that consume ``name`` directly or through a chain of unary activations."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    seen: set[str] = set()
    kinds: set[str] = set()
    frontier = [name]
    while frontier:
        value = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        for node in consumers.get(value, []):
            kinds.add(node.op_type)
            if node.op_type in _UNARY:
                frontier.extend(node.output)
    return kinds


def _wants_hint(graph: onnx.GraphProto, value: onnx.ValueInfoProto) -> bool:
    tensor = value.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT or len(tensor.shape.dim) != 4:
        return False
    channels = tensor.shape.dim[1]
    if not channels.HasField("dim_value") or channels.dim_value % _CHANNEL_BLOCK:
        return False
    kinds = _reaches(graph, value.name)
    return "Conv" in kinds and bool(kinds & _NEEDS_BLOCKED)


def add_layout_hints(model: onnx.ModelProto) -> list[str]:
    """Inserts the identity ``AveragePool`` after every float32 NCHW graph input that feeds both a convolution
    and an ``Add``/``Sum``/``Mul``/``Concat`` (directly or through activations), in place. The graph's
    inputs and outputs keep their names. Returns the names of the inputs hinted."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    used = {v for node in graph.node for v in (*node.input, *node.output)} | {v.name for v in graph.output}
    hinted: list[str] = []
    hints: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.name in initializers or not _wants_hint(graph, value):
            continue
        inner, k = f"{value.name}__layout", 0
        while inner in used:
            k += 1
            inner = f"{value.name}__layout{k}"
        used.add(inner)
        for node in graph.node:
            node.input[:] = [inner if v == value.name else v for v in node.input]
        hints.append(
            helper.make_node("AveragePool", [value.name], [inner], name=inner, kernel_shape=[1, 1], strides=[1, 1])
        )
        hinted.append(value.name)
    for i, node in enumerate(hints):
        graph.node.insert(i, node)
    return hinted
