"""Partition runtimes side by side: onnxruntime vs splitinfer's interpreter vs eager torch, per variant.

ResNet-18- and ResNet-50-shaped models (224x224 by default), batch 1, one thread for every engine, each
variant (fp32, fp16, int8) divided in two at the middle of its operations. For each partition and for the
whole model: median time of the interpreter and of onnxruntime (the ONNX twin the pool stores: exported,
int8-quantised with real int8 kernels, checked against the interpreter), and eager torch for the whole
fp32 model. Engines are interleaved (one sample of each per round) so that a noisy machine affects all alike.

    python benchmarks/runtimes.py --out benchmarks/results/runtimes.json
    python benchmarks/runtimes.py --quick   # 64x64, few rounds: keeps the script from rotting in CI

``--pipeline`` instead breaks down the end-to-end onnxruntime path of ``benchmarks/pipeline.py`` (the same
cuts rule, division through the pool, device head in this process, two onnxruntime nodes, codec none): in
interleaved rounds, local eager torch, the whole model on onnxruntime (our export, and
``torch.onnx.export(model, dynamo=True)`` of the eager model), each partition alone in this process (with
and without the layout hints of :mod:`splitinfer.onnx.layout`), the split path with the head's time and
the nodes' own step timings (compute, decode, encode, queue), a raw gRPC chain on the same onnxruntime
artifacts (benchmarks/_raw_ort_chain.py), and the split's bytes alone with no compute (stand-in partitions
that pass on a prefix of their input at the real output shapes) through the same nodes and through a raw
chain (benchmarks/_raw_chain.py). It counts the layout operations onnxruntime's optimiser leaves in each
partition, and bounds the target: the whole model on onnxruntime plus the transport alone, against 0.70x.

    python benchmarks/runtimes.py --pipeline --models resnet50 --rounds 30 --out /tmp/ort-breakdown.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, median, write_json

from edge_agent.client import NodeClient
from server_node.process import spawn_node
from splitinfer import zoo
from splitinfer.codecs import encode_wire
from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.onnx import build_partition_onnx, export_onnx
from splitinfer.pool import ModelPool
from splitinfer.pool.manifest import OnnxInfo
from splitinfer.program import CompiledProgram, Program, export_program
from splitinfer.routing import build_route
from splitinfer.runtime import (
    LoadedPartition,
    OrtOptions,
    PartitionKey,
    RuntimeOptions,
    load_partition,
    save_partition_artifact,
)
from splitinfer.v1 import model_server_pb2
from splitinfer.variants import make_variant

HERE = Path(__file__).resolve().parent
#: benchmarks/pipeline.py's target for split ResNet-50 on onnxruntime against local eager torch.
PIPELINE_ORT_TARGETS = {"resnet18": 0.75, "resnet50": 0.70}


def _interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    for fn in fns.values():
        fn()  # warm up (sessions, allocator)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def _engines(program: Program, variant: str, feeds: dict[str, torch.Tensor], key: PartitionKey) -> dict[str, Any]:
    model, info = build_partition_onnx(program, variant, [feeds])
    ort_options = RuntimeOptions(ort=OrtOptions(intra_op_threads=1, inter_op_threads=1))
    compiled = CompiledProgram(program)
    engines: dict[str, Callable[[], object]] = {"interpreter": lambda: compiled(feeds)}
    if model is not None:
        part = LoadedPartition(key, program, onnx_model=model, onnx=info, options=ort_options)
        engines["onnxruntime"] = lambda: part.run(feeds)
    return {"engines": engines, "onnx": info}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    console = Console(width=160)
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        factory = {"resnet18": zoo.resnet18, "resnet50": zoo.resnet50}[name]
        model, example = factory(args.resolution)
        x = example[0]
        for variant in args.variants.split(","):
            program = make_variant(model, example, variant)
            graph = ModelGraph.build(program, example)
            division = partition_at(graph, name, [len(graph.nodes) // 2])
            values: dict[str, torch.Tensor] = {program.input_names[0]: x}
            values.update(CompiledProgram(program.subprogram(program.input_names, [
                s.name for p in division.partitions for s in p.inputs if s.name not in values
            ]))(values) if len(division.partitions) > 1 else {})  # fmt: skip
            parts: list[tuple[str, Program]] = [("whole", program)]
            parts += [(p.name, division.partition_program(p.name)) for p in division.partitions]
            for part_name, part_program in parts:
                feeds = {s.name: values[s.name] for s in part_program.inputs}
                key = PartitionKey(name, variant, part_name)
                built = _engines(part_program, variant, feeds, key)
                engines = built["engines"]
                if part_name == "whole" and variant == "fp32":
                    eager = model.eval()

                    def eager_run(m: torch.nn.Module = eager, inp: torch.Tensor = x) -> object:
                        with torch.inference_mode():
                            return m(inp)

                    engines = {"eager": eager_run, **engines}
                samples = _interleaved(engines, args.rounds)
                medians = {k: median(v) * 1e3 for k, v in samples.items()}
                row = {
                    "model": name,
                    "resolution": args.resolution,
                    "variant": variant,
                    "partition": part_name,
                    "median_ms": medians,
                    "onnx_available": built["onnx"].available,
                    "onnx_reason": built["onnx"].reason,
                    "quantization": built["onnx"].quantization,
                    "max_abs_error": built["onnx"].max_abs_error,
                }
                if "onnxruntime" in medians:
                    row["ort_vs_interpreter"] = medians["onnxruntime"] / medians["interpreter"]
                if "eager" in medians and "onnxruntime" in medians:
                    row["ort_vs_eager"] = medians["onnxruntime"] / medians["eager"]
                    row["interpreter_vs_eager"] = medians["interpreter"] / medians["eager"]
                rows.append(row)
                console.print(
                    f"{name}@{variant}/{part_name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in medians.items())
                )
    table = Table(title=f"runtime x variant, batch 1, 1 thread, {args.resolution}x{args.resolution}")
    for col in ("model", "variant", "partition", "eager ms", "interp ms", "ORT ms", "ORT/interp", "ORT quant"):
        table.add_column(col)
    for r in rows:
        m = r["median_ms"]
        table.add_row(
            r["model"], r["variant"], r["partition"],
            f"{m['eager']:.2f}" if "eager" in m else "",
            f"{m['interpreter']:.2f}",
            f"{m['onnxruntime']:.2f}" if "onnxruntime" in m else "n/a",
            f"{r['ort_vs_interpreter']:.2f}" if "ort_vs_interpreter" in r else "",
            r["quantization"] or "",
        )  # fmt: skip
    console.print(table)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    parameters = {"torch_threads": 1, "ort_threads": 1, "onnxruntime": metadata.version("onnxruntime")}
    machine = machine_info()
    return {"benchmark": "runtimes", "machine": machine, "parameters": parameters, "args": settings, "rows": rows}


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _pipeline_cuts(graph: ModelGraph) -> list[int]:
    """benchmarks/pipeline.py's cuts: the narrow cuts nearest a third and two thirds of the FLOPs."""
    interior = narrow_cuts(graph)[1:-1]
    first = min(interior, key=lambda c: abs(c.flops_before - graph.total_flops / 3))
    second = min(
        (c for c in interior if c.position > first.position),
        key=lambda c: abs(c.flops_before - 2 * graph.total_flops / 3),
    )
    return [first.position, second.position]


def _optimized_ops(model: bytes) -> dict[str, int]:
    """Operation counts of the graph onnxruntime runs (CPU, optimisation level all, as OrtSession sets it)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


class _RawOrtServer:
    """benchmarks/_raw_ort_chain.py in its own process: raw bytes in, the partition on onnxruntime, out;
    with ``interpreter``, benchmarks/_raw_chain.py (the pipeline's raw floor) on the artifact's program."""

    def __init__(self, work: Path, artifact: Path, next_address: str = "", interpreter: bool = False) -> None:
        port_file = work / f"raw-{artifact.name}.port"
        script, flag = ("_raw_chain.py", "--program") if interpreter else ("_raw_ort_chain.py", "--artifact")
        command = [sys.executable, str(HERE / script), "--port-file", str(port_file)]
        command += [flag, str(artifact)] + (["--next", next_address] if next_address else [])
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"raw onnxruntime server for {artifact} did not start")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text()}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class _Carry(torch.nn.Module):
    """Compute-free stand-ins for a chain's partitions: each step passes on a prefix of its input, reshaped
    to the real partition's output shape (one slice and one copy), so that the bytes crossing every hop are
    the real split's and what the chain costs is transport and request paths only."""

    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.shapes = shapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for shape in self.shapes:
            x = x.reshape(-1)[: int(np.prod(shape))].reshape(shape).clone()
        return x


def _carry_chain(division: Any, work: Path) -> tuple[Any, dict[str, tuple[PartitionKey, Path, str]], torch.Tensor]:
    """The division's node partitions (all but the head) as compute-free stand-ins of the same sizes."""
    parts = division.partitions[1:]
    if any(len(p.inputs) != 1 or len(p.outputs) != 1 for p in division.partitions):
        raise ValueError("the transport-only chain needs one tensor between partitions")
    first = parts[0].inputs[0]
    x = torch.zeros(first.shape, dtype=first.dtype)
    model = _Carry([tuple(p.outputs[0].shape) for p in parts])
    program = export_program(model, (x,))
    graph = ModelGraph.build(program, (x,))
    clones = [i + 1 for i, node in enumerate(graph.nodes) if "clone" in node.op][:-1]
    carry = partition_at(graph, "carry", clones)
    dirs = {}
    for spec in carry.partitions:
        key = PartitionKey("carry", "fp32", spec.name)
        dirs[spec.name] = (key, work / f"carry-{spec.name}", save_partition_artifact(
            carry.partition_program(spec.name), key, work / f"carry-{spec.name}"
        ))  # fmt: skip
    return carry, dirs, x


def _ort_part(key: PartitionKey, program: Program, model: bytes, names: dict[str, str]) -> LoadedPartition:
    info = OnnxInfo(file="model.onnx", opset=18, names=names, dynamic_batch=False)
    return LoadedPartition(key, program, onnx_model=model, onnx=info)


def pipeline_breakdown(name: str, rounds: int, resolution: int, work: Path) -> dict[str, Any]:
    """Where the end-to-end onnxruntime split's time goes (see the module docstring)."""
    model, (x,) = {"resnet18": zoo.resnet18, "resnet50": zoo.resnet50}[name](resolution)
    model.eval()
    program = export_program(model, (x,))
    graph = ModelGraph.build(program, (x,))
    division = partition_at(graph, name, _pipeline_cuts(graph))
    input_name = program.input_names[0]
    pool = ModelPool(work / f"{name}-pool")
    sha = pool.add_division(division, variant="fp32", division_name="default", samples=[{input_name: x}])
    dirs: dict[str, tuple[PartitionKey, Path, str]] = {}
    for part in division.partitions:
        key = PartitionKey(name, "fp32", part.name)
        dirs[part.name] = (key, work / part.name, pool.export_partition(sha, part.name, work / part.name))
    loaded = {p: load_partition(d, s) for p, (_, d, s) in dirs.items()}
    for p, part in loaded.items():
        assert part.runtime == "onnxruntime", f"{p}: {part.fallback_reason}"
    # Feeds of every partition from the interpreter's activations.
    values: dict[str, torch.Tensor] = {input_name: x}
    for part in division.partitions:
        sub = division.partition_program(part.name)
        values.update(CompiledProgram(sub)({s.name: values[s.name] for s in sub.inputs}))
    feeds = {p.name: {s.name: values[s.name] for s in p.inputs} for p in division.partitions}
    ops: dict[str, dict[str, int]] = {}
    # The whole model on onnxruntime: our export (from the program) and torch.onnx.export of the eager model.
    whole = export_onnx(program)
    whole_part = _ort_part(PartitionKey(name, "fp32", "whole"), program, whole.model, dict(whole.names))
    ops["whole"] = _optimized_ops(whole.model)
    import onnxruntime as ort

    direct_model = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, verbose=False)
    assert direct_model is not None
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    direct_bytes = direct_model.model_proto.SerializeToString()
    direct = ort.InferenceSession(direct_bytes, so, providers=["CPUExecutionProvider"])
    direct_feed = {direct.get_inputs()[0].name: x.numpy()}
    # Each partition without the layout hints, to show what they change.
    plain: dict[str, LoadedPartition] = {}
    for part in division.partitions:
        sub = division.partition_program(part.name)
        exported = export_onnx(sub, layout_hints=False)
        plain[part.name] = _ort_part(PartitionKey(name, "fp32", part.name), sub, exported.model, dict(exported.names))
        ops[f"{part.name} (no hints)"] = _optimized_ops(exported.model)
        shipped = (dirs[part.name][1] / "model.onnx").read_bytes()
        ops[part.name] = _optimized_ops(shipped)
    head, head_out = loaded["p0"], division.partitions[0].outputs[0].name
    nodes = [spawn_node(["--torch-threads", "1"]) for _ in division.partitions[1:]]
    # The raw floor on onnxruntime: the same artifacts behind hand-rolled gRPC servers passing raw bytes.
    raw_servers: list[_RawOrtServer] = []
    for part in reversed(division.partitions[1:]):
        raw_servers.insert(0, _RawOrtServer(work, dirs[part.name][1], raw_servers[0].address if raw_servers else ""))
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    raw_channel = grpc.insecure_channel(raw_servers[0].address, options=options)
    raw_call = raw_channel.unary_unary("/raw.Chain/Call")
    # Transport only: the same bytes through the same nodes and through a raw chain, no compute.
    carry, carry_dirs, carry_x = _carry_chain(division, work)
    for part in reversed(carry.partitions):
        next_address = raw_servers[-1].address if len(raw_servers) > len(division.partitions) - 1 else ""
        raw_servers.append(_RawOrtServer(work, carry_dirs[part.name][1], next_address, interpreter=True))
    carry_channel = grpc.insecure_channel(raw_servers[-1].address, options=options)
    carry_raw_call = carry_channel.unary_unary("/raw.Chain/Call")
    steps: dict[str, list[float]] = {}
    try:
        for node, part in zip(nodes, division.partitions[1:], strict=True):
            with NodeClient(node.address) as c:
                c.load_partition(str(dirs[part.name][1]), dirs[part.name][0], dirs[part.name][2])
        route = build_route(
            name,
            "fp32",
            division.partitions[1:],
            {p.name: [n.address] for n, p in zip(nodes, division.partitions[1:], strict=True)},
        )
        for node, part in zip(nodes, carry.partitions, strict=True):
            with NodeClient(node.address) as c:
                c.load_partition(str(carry_dirs[part.name][1]), carry_dirs[part.name][0], carry_dirs[part.name][2])
        carry_route = build_route(
            "carry",
            "fp32",
            carry.partitions,
            {p.name: [n.address] for n, p in zip(nodes, carry.partitions, strict=True)},
        )
        carry_in = carry.partitions[0].inputs[0].name
        client = NodeClient(nodes[0].address)

        def local() -> None:
            with torch.no_grad():
                model(x)

        def split() -> None:
            start = time.perf_counter()
            features = head.run({input_name: x})[head_out]
            steps.setdefault("split head p0", []).append((time.perf_counter() - start) * 1e3)
            header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
            outputs, timings = client.process_wire(header, [encode_wire(features, head_out)], timeout_s=60)
            assert outputs
            for t in timings:
                for field in ("compute_ms", "decode_ms", "encode_ms", "queue_ms"):
                    steps.setdefault(f"split node {t.partition.partition} {field}", []).append(getattr(t, field))

        engines: dict[str, Callable[[], object]] = {
            "local eager torch": local,
            "whole ORT (our export)": lambda: whole_part.run({input_name: x}),
            "whole ORT (torch.onnx.export of eager)": lambda: direct.run(None, direct_feed),
        }
        for p, part in loaded.items():
            engines[f"{p} ORT alone"] = lambda part=part, f=feeds[p]: part.run(f)
            engines[f"{p} ORT alone, no hints"] = lambda part=plain[p], f=feeds[p]: part.run(f)
        engines["split ORT end to end"] = split

        def raw() -> None:
            start = time.perf_counter()
            features = head.run({input_name: x})[head_out]
            steps.setdefault("raw head p0", []).append((time.perf_counter() - start) * 1e3)
            assert raw_call(features.contiguous().numpy().tobytes())

        engines["raw gRPC chain on ORT"] = raw

        def carry_split() -> None:
            header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=carry_route)
            outputs, _ = client.process_wire(header, [encode_wire(carry_x, carry_in)], timeout_s=60)
            assert outputs

        engines["transport only: splitinfer nodes"] = carry_split
        engines["transport only: raw gRPC chain"] = lambda: carry_raw_call(carry_x.numpy().tobytes())
        samples = _interleaved(engines, rounds)
        steps = {k: v[-rounds:] for k, v in steps.items()}  # the warm-up's steps out
        client.close()
    finally:
        raw_channel.close()
        carry_channel.close()
        for server in raw_servers:
            server.stop()
        for node in nodes:
            node.stop()
    ms = {k: [s * 1e3 for s in v] for k, v in samples.items()} | steps
    medians = {k: median(v) for k, v in ms.items()}
    p95s = {k: _p95(v) for k, v in ms.items()}
    local_ms, split_ms = medians["local eager torch"], medians["split ORT end to end"]
    compute = medians["split head p0"] + sum(
        medians[f"split node {p.name} compute_ms"] for p in division.partitions[1:]
    )
    # Per round: the split's total less its head and its nodes' compute is what the wire and the nodes'
    # request paths cost.
    per_round = [
        total * 1e3
        - ms["split head p0"][i]
        - sum(ms[f"split node {p.name} compute_ms"][i] for p in division.partitions[1:])
        for i, total in enumerate(samples["split ORT end to end"])
    ]
    overhead = median(per_round)
    target = PIPELINE_ORT_TARGETS.get(name, 0.70)
    budget = target * local_ms
    whole_ms = medians["whole ORT (our export)"]
    raw_ms = medians["raw gRPC chain on ORT"]
    carry_ours = medians["transport only: splitinfer nodes"]
    carry_raw = medians["transport only: raw gRPC chain"]
    # Bounds: the whole model on onnxruntime (no partition edges at all) plus the transport of the split's
    # bytes alone, through splitinfer's nodes and through the raw chain.
    best, raw_best = whole_ms + carry_ours, whole_ms + carry_raw

    def reach(ms: float) -> str:
        return f"{ms:.1f} ms = {ms / local_ms:.3f}x ({'within' if ms <= budget else 'beyond'} the target)"

    verdict = (
        f"{name}: split on ORT {split_ms:.1f} ms = {split_ms / local_ms:.3f}x local torch ({local_ms:.1f} ms); "
        f"target {target}x = {budget:.1f} ms ({'met' if split_ms <= budget else 'NOT met'}). In the split: ORT "
        f"compute {compute:.1f} ms (head + nodes' own step times), the rest {overhead:.1f} ms. Whole model on "
        f"ORT {whole_ms:.1f} ms = {whole_ms / local_ms:.3f}x; raw gRPC chain on the same ORT partitions "
        f"{raw_ms:.1f} ms = {raw_ms / local_ms:.3f}x. The split's bytes alone (no compute): {carry_ours:.1f} ms "
        f"through splitinfer's nodes, {carry_raw:.1f} ms through the raw chain. Bounds: whole-model ORT + raw "
        f"transport {reach(raw_best)}; whole-model ORT + splitinfer's transport {reach(best)}. At this run's "
        f"local torch the target leaves {budget - whole_ms:.1f} ms beyond whole-model ORT for partition edges and "
        f"transport. (Ratios are to this run's own local-torch samples; benchmarks/pipeline.py's end-to-end "
        f"run is the target's measurement.)"
    )
    return {
        "model": f"{name}@{resolution}",
        "cuts": [str(c) for c in division.partitions],
        "median_ms": medians,
        "p95_ms": p95s,
        "split_compute_ms": compute,
        "split_rest_ms": overhead,
        "transport_only_splitinfer_ms": carry_ours,
        "transport_only_raw_ms": carry_raw,
        "split_ratio": split_ms / local_ms,
        "whole_ort_ratio": whole_ms / local_ms,
        "raw_ort_chain_ratio": raw_ms / local_ms,
        "bound_whole_ort_plus_splitinfer_transport_ratio": best / local_ms,
        "bound_whole_ort_plus_raw_transport_ratio": raw_best / local_ms,
        "target_ratio": target,
        "target_met": split_ms <= budget,
        "budget_beyond_whole_ort_ms": budget - whole_ms,
        "optimized_ops": ops,
        "verdict": verdict,
    }


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    console = Console(width=160)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            row = pipeline_breakdown(name, args.rounds, args.resolution, Path(tmp) / name)
            rows.append(row)
            table = Table(title=f"{row['model']}: split on onnxruntime, where the time goes (1 thread, batch 1)")
            for col in ("what", "median ms", "p95 ms", "x local torch"):
                table.add_column(col, justify="right")
            local_ms = row["median_ms"]["local eager torch"]
            for what, value in row["median_ms"].items():
                table.add_row(what, f"{value:.2f}", f"{row['p95_ms'][what]:.2f}", f"{value / local_ms:.3f}")
            table.add_row("split less its ORT compute", f"{row['split_rest_ms']:.2f}", "", "")
            console.print(table)
            for part, counts in row["optimized_ops"].items():
                console.print(f"  optimised graph {part}: {json.dumps(counts)}")
            console.print(row["verdict"])
    return {"benchmark": "runtimes-pipeline", "machine": machine_info(), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
    }, "onnxruntime": metadata.version("onnxruntime"), "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--variants", default="fp32,fp16,int8")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="64x64, 3 rounds")
    parser.add_argument("--pipeline", action="store_true", help="break down the pipeline's onnxruntime split")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.resolution, args.rounds = 64, 3
    result = run_pipeline(args) if args.pipeline else run(args)
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
