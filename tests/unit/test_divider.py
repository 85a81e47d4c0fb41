"""The Divider: every zoo model divided gives the whole model's outputs; capacities and devices respected."""

from __future__ import annotations

import random
from functools import cache

import pytest
import torch

from splitinfer.divider import (
    DeviceClass,
    DivideOptions,
    Division,
    LocalDivisionRunner,
    ServerCapacity,
    active_head_cuts,
    divide,
    partition_at,
)
from splitinfer.divider.picture import division_dot, partition_dot
from splitinfer.errors import FailedPrecondition, InvalidArgument
from splitinfer.graph import ModelGraph, bottlenecks, cut_points, narrow_cuts
from splitinfer.program import export_program
from splitinfer.zoo import ZOO, build

MODELS = sorted(ZOO)


@cache
def _graph(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], ModelGraph]:
    model, example = build(name)
    return model, example, ModelGraph.build(export_program(model, example), example)


def _expected(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*example)
    return list(out) if isinstance(out, tuple) else [out]


def _check(division: Division, model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> None:
    program = division.program
    outputs = LocalDivisionRunner(division).run(dict(zip(program.input_names, example, strict=True)))
    for name, expected in zip(program.output_names, _expected(model, example), strict=True):
        assert torch.allclose(outputs[name], expected, atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize("name", MODELS)
def test_divided_model_equals_whole_model(name: str) -> None:
    model, example, graph = _graph(name)
    positions = [c.position for c in cut_points(graph)][1:-1]
    rng = random.Random(name)
    # Every single cut, and a few random multi-way divisions.
    for p in positions:
        _check(partition_at(graph, name, [p]), model, example)
    for _ in range(5):
        chosen = rng.sample(positions, k=min(len(positions), rng.randint(2, 5)))
        _check(partition_at(graph, name, chosen), model, example)


@pytest.mark.parametrize("name", MODELS)
def test_graph_costs_are_measured(name: str) -> None:
    _, _, graph = _graph(name)
    assert graph.total_flops > 0
    convs = [n for n in graph.nodes if n.op in ("aten.conv2d.default", "aten.linear.default")]
    assert convs and all(n.flops > 0 and n.param_names for n in convs)
    cuts = cut_points(graph)
    assert cuts[0].position == 0 and cuts[0].crossing_bytes == sum(s.nbytes for s in graph.program.inputs)
    assert cuts[-1].crossing == ()
    assert set(c.position for c in narrow_cuts(graph)) <= set(c.position for c in cuts)


def test_a_value_read_twice_is_one_value_with_two_consumers() -> None:
    _, _, graph = _graph("residual_cnn")
    assert any(len(readers) >= 2 for readers in graph.consumers.values())


def test_bottleneck_is_where_the_network_thins() -> None:
    _, _, graph = _graph("tiny_cnn")
    best = bottlenecks(graph, 1)[0]
    interior = cut_points(graph)[1:-1]
    assert best.crossing_bytes == min(c.crossing_bytes for c in interior)


def test_fan_out_within_a_model_is_a_partition_dag() -> None:
    model, example, graph = _graph("two_heads")
    names = [n.name for n in graph.nodes]
    # Backbone | classification head | segmentation head.
    first_head = next(i for i, n in enumerate(graph.nodes) if n.op == "aten.adaptive_avg_pool2d.default")
    first_seg = next(i for i, n in enumerate(graph.nodes) if i > first_head and n.op == "aten.conv2d.default")
    division = partition_at(graph, "two_heads", [first_head, first_seg])
    backbone = division.partitions[0]
    successors = dict(backbone.successors)
    assert sorted(successors[names[first_head - 1]]) == ["p1", "p2"], division
    _check(division, model, example)


def test_division_respects_memory_and_balances_load() -> None:
    model, example, graph = _graph("residual_cnn")
    params = graph.param_bytes({p for n in graph.nodes for p in n.param_names})
    servers = [ServerCapacity(f"s{i}", 1e9, int(params * 0.8)) for i in range(3)]
    division = divide(graph, "residual_cnn", servers)
    assert len(division.partitions) >= 2  # no single server can hold the model
    for part in division.partitions:
        server = next(s for s in servers if s.name == part.host)
        assert part.param_bytes <= server.memory_bytes
    # Load balance: the busiest server does at most 1.6x the ideal even share of the work.
    loads = [p.flops for p in division.partitions]
    assert max(loads) <= 1.6 * graph.total_flops / len(loads), loads
    _check(division, model, example)


def test_faster_server_gets_more_work() -> None:
    _, _, graph = _graph("residual_cnn")
    division = divide(
        graph, "residual_cnn", [ServerCapacity("slow", 1e9, 1 << 30), ServerCapacity("fast", 4e9, 1 << 30)]
    )
    by_host = {p.host: p.flops for p in division.partitions}
    assert by_host["fast"] > by_host["slow"]


def test_impossible_memory_is_a_clear_error() -> None:
    _, _, graph = _graph("residual_cnn")
    with pytest.raises(FailedPrecondition, match="fits the servers' memory"):
        divide(graph, "residual_cnn", [ServerCapacity("tiny", 1e9, 1024)])


def test_division_follows_the_active_device_population() -> None:
    model, example, graph = _graph("tiny_cnn")
    phone = DeviceClass("phone", flops=1e8, memory_bytes=1 << 30, uplink_mbps=5.85)
    # A Jetson computes fast but holds only the first layers (24 KB for models) and has a slow uplink.
    jetson = DeviceClass("jetson", flops=1e10, memory_bytes=24 << 10, uplink_mbps=1.1)
    servers = [ServerCapacity("edge", 5e9, 1 << 30), ServerCapacity("cloud", 5e10, 1 << 31)]

    def division_for(phone_rate: float, jetson_rate: float) -> tuple[dict[str, int], Division]:
        devices = [
            DeviceClass(phone.name, phone.flops, phone.memory_bytes, phone.uplink_mbps, phone_rate),
            DeviceClass(jetson.name, jetson.flops, jetson.memory_bytes, jetson.uplink_mbps, jetson_rate),
        ]
        heads = active_head_cuts(graph, devices, server_flops=5e10)
        return heads, divide(graph, "tiny_cnn", servers, required=list(heads.values()))

    phones_only, d1 = division_for(10.0, 0.0)
    jetsons_only, d2 = division_for(0.0, 10.0)
    assert set(phones_only) == {"phone"} and set(jetsons_only) == {"jetson"}
    assert phones_only["phone"] != jetsons_only["jetson"]  # the faster device keeps more of the model
    assert jetsons_only["jetson"] > phones_only["phone"]
    boundaries = lambda d: {p.start for p in d.partitions}  # noqa: E731
    assert phones_only["phone"] in boundaries(d1) and jetsons_only["jetson"] in boundaries(d2)
    assert boundaries(d1) != boundaries(d2)
    _, mixed = division_for(10.0, 10.0)
    assert {phones_only["phone"], jetsons_only["jetson"]} <= boundaries(mixed) | {0}
    for division in (d1, d2, mixed):
        _check(division, model, example)


class _Masked(torch.nn.Module):
    """Layers that all read one mask: no interior cut sends a single tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x)) * mask
        return x


def test_the_divider_searches_the_smallest_live_tensor_bound_and_reports_it() -> None:
    torch.manual_seed(0)
    model, x, mask = _Masked().eval(), torch.randn(1, 16), (torch.rand(1, 16) > 0.3).float()
    graph = ModelGraph.build(export_program(model, (x, mask)), [x, mask])
    servers = [ServerCapacity(f"s{i}", 1e6, 10**9) for i in range(3)]  # slow: splitting pays for the links
    fixed = divide(graph, "masked", servers, options=DivideOptions(max_live_tensors=1))
    assert len(fixed.partitions) == 1 and fixed.live_search == ((1, 1),)
    found = divide(graph, "masked", servers)
    assert len(found.partitions) == 3 and found.max_live_tensors == 2
    assert found.live_search == ((1, 1), (2, 3))  # stops at the first bound that gives every server a partition
    assert "cuts of at most 2 live tensors (partitions by bound: <=1: 1, <=2: 3)" in str(found)
    outputs = LocalDivisionRunner(found).run({graph.program.input_names[0]: x, graph.program.input_names[1]: mask})
    with torch.no_grad():
        assert torch.allclose(outputs[graph.program.output_names[0]], model(x, mask), atol=1e-6)
    capped = divide(graph, "masked", servers, options=DivideOptions(max_live_limit=1))
    assert len(capped.partitions) == 1  # the bound is a bound
    with pytest.raises(InvalidArgument, match="at least 1"):
        divide(graph, "masked", servers, options=DivideOptions(max_live_tensors=0))


def test_the_picture_shows_partitions_and_the_tensors_between_them() -> None:
    graph = _graph("residual_cnn")[2]
    servers = [ServerCapacity("edge", 1e9, 10**9), ServerCapacity("cloud", 4e9, 10**9)]
    division = divide(graph, "residual_cnn", servers)
    dot = partition_dot(graph, division)
    assert dot.count("subgraph") == len(division.partitions)
    for part in division.partitions:
        assert f'"{part.name}" [fillcolor=' in dot and f"{part.name} on {part.host}" in dot
        assert "MFLOPs" in dot and "params " in dot and "memory " in dot
    crossing = division.partitions[1].inputs[0]
    assert f'"{division.partitions[0].name}" -> "{division.partitions[1].name}"' in dot
    assert crossing.name in dot and "x".join(map(str, crossing.shape)) in dot
    assert len(dot.splitlines()) < 40  # one box per partition, not one per operation
    ops = division_dot(graph, division)
    assert len(ops.splitlines()) > len(graph.nodes)  # the op-level graph behind the flag


def test_the_picture_marks_a_post_processing_stage() -> None:
    from dataclasses import replace

    from splitinfer.postprocess import PostprocessSpec
    from splitinfer.zoo.detector import detector

    model, example = detector()
    graph = ModelGraph.build(export_program(model, example), example)
    spec = model.postprocess
    assert isinstance(spec, PostprocessSpec)
    division = replace(divide(graph, "detector", [ServerCapacity("s", 1e9, 10**9)]), postprocess=spec)
    dot = partition_dot(graph, division)
    assert "post-processing: detection.decode_nms" in dot and '-> "postprocess" [label="class_logits"]' in dot
