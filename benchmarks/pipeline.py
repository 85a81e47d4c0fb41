"""splitinfer's chain against local torch and a hand-rolled raw gRPC chain, in one run on one machine.

1. End to end, ResNet-18- and ResNet-50-shaped at 224x224, batch 1, one torch thread everywhere, split in
   three at narrow cuts near a third and two thirds of the FLOPs: the device (this process) runs p0, then
   (a) nothing else: the whole model in local torch; (b) raw gRPC chain A (p1) -> B (p2) passing float32
   bytes (the floor); (c) splitinfer: node A (p1) -> node B (p2), codec none. The three are timed in
   interleaved rounds (one sample of each per round); median and p95.
2. Per hop: float32 tensors from 4 KiB to 64 MiB through one splitinfer node running a copy partition,
   against a raw gRPC echo of the same bytes, sampled alternately after a warm-up: medians, p95,
   throughput; targets >= 0.8x the raw throughput from 1 MiB, <= 1.3x the raw latency at 4 KiB.
3. Chunk sizes: the per-hop sizes from 1 MiB timed again with chunks of 256 KiB to 4 MiB (client and
   node alike), to choose DEFAULT_CHUNK_BYTES by measurement (only tensors above HOP_ONCE_MAX_BYTES, 16 MiB,
   are chunked: smaller ones go as one ProcessOnce).

Every process runs with the nodes' malloc policy (NodeConfig.malloc_*, applied by the
nodes' daemon, by _raw_chain.py from its flags, and by this client process): baselines and splitinfer
share one allocator setting.

    python benchmarks/pipeline.py --out benchmarks/results/pipeline.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, median, time_call, write_json

from edge_agent.client import NodeClient
from server_node.allocator import apply_malloc_policy
from server_node.config import NodeConfig
from server_node.process import spawn_node
from splitinfer.codecs import DEFAULT_CHUNK_BYTES, encode_wire
from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.pool import ModelPool
from splitinfer.program import CompiledProgram, export_program
from splitinfer.routing import build_route
from splitinfer.runtime import PartitionKey, load_partition, save_partition_artifact
from splitinfer.v1 import model_server_pb2, route_pb2
from splitinfer.zoo import resnet18, resnet50

HERE = Path(__file__).resolve().parent
#: Split ResNet-18@224 end to end against local torch (the raw chain measured 1.10x here).
TARGET_RATIO = 1.12
#: Split end to end on onnxruntime (device head and nodes) against the whole model in local eager torch.
ORT_TARGETS = {"resnet18": 0.75, "resnet50": 0.70}
#: One hop's throughput against a raw gRPC echo of the same bytes, 1-64 MiB.
HOP_THROUGHPUT_TARGET = 0.8
#: A 4 KiB hop's latency against the raw echo.
SMALL_HOP_LATENCY_TARGET = 1.3


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _malloc_args() -> list[str]:
    """The nodes' allocator policy (NodeConfig defaults, which the spawned nodes apply) for the raw servers:
    baselines and nodes run with the same malloc settings."""
    defaults = NodeConfig()
    return [
        "--malloc-mmap-threshold-bytes", str(defaults.malloc_mmap_threshold_bytes),
        "--malloc-trim-threshold-bytes", str(defaults.malloc_trim_threshold_bytes),
        "--malloc-arena-max", str(defaults.malloc_arena_max),
    ]  # fmt: skip


class RawServer:
    def __init__(
        self,
        work: Path,
        name: str,
        program: Path | None = None,
        next_address: str = "",
        aio: bool = False,
        compute_log: Path | None = None,
    ) -> None:
        port_file = work / f"{name}.port"
        port_file.unlink(missing_ok=True)  # a server of the same name earlier in this run (--chunk-sweep 0) left it
        command = [sys.executable, str(HERE / "_raw_chain.py"), "--port-file", str(port_file), *_malloc_args()]
        if program:
            command += ["--program", str(program)]
        if aio:
            command.append("--aio")
        if compute_log is not None:
            command += ["--compute-log", str(compute_log)]
        if next_address:
            command += ["--next", next_address]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"raw server {name} did not start")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text()}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _raw_call(address: str):  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    )
    return channel, channel.unary_unary("/raw.Chain/Call")


MODELS = {"resnet18": resnet18, "resnet50": resnet50}


def end_to_end(work: Path, name: str, resolution: int, repeats: int) -> dict[str, Any]:
    model, (x,) = MODELS[name](resolution)
    model.eval()
    program = export_program(model, (x,))
    graph = ModelGraph.build(program, (x,))
    n = len(graph.nodes)
    interior = narrow_cuts(graph)[1:-1]
    first = min(interior, key=lambda c: abs(c.flops_before - graph.total_flops / 3))
    second = min(
        (c for c in interior if c.position > first.position),
        key=lambda c: abs(c.flops_before - 2 * graph.total_flops / 3),
    )
    division = partition_at(graph, name, [first.position, second.position])
    # Through the pool, as a deployment does: each partition gets its checked ONNX twin beside the program.
    pool = ModelPool(work / f"{name}-pool")
    sha = pool.add_division(division, variant="fp32", division_name="default", samples=[{program.input_names[0]: x}])
    paths = {}
    for part in division.partitions:
        key = PartitionKey(name, "fp32", part.name)
        part_sha = pool.export_partition(sha, part.name, work / f"{name}-{part.name}")
        paths[part.name] = (key, work / f"{name}-{part.name}", part_sha)
    head = CompiledProgram(division.partition_program("p0"))
    ort_head = load_partition(paths["p0"][1], paths["p0"][2])  # onnxruntime, one thread
    assert ort_head.runtime == "onnxruntime", ort_head.fallback_reason
    head_out = division.partitions[0].outputs[0].name
    interpreter_config = work / "interpreter-node.json"
    interpreter_config.write_text(json.dumps({"runtime": "interpreter"}))

    # The raw servers log each call's compute time (what a node reports as compute_ms), read after they stop.
    raw_logs = {part: work / f"{name}-raw-{part}-compute.json" for part in ("p1", "p2")}
    b = RawServer(work, f"{name}-rawB", paths["p2"][1], compute_log=raw_logs["p2"])
    a = RawServer(work, f"{name}-rawA", paths["p1"][1], b.address, compute_log=raw_logs["p1"])
    channel, call = _raw_call(a.address)
    nodes = [spawn_node(["--torch-threads", "1", "--config", str(interpreter_config)]) for _ in range(2)]
    ort_nodes = [spawn_node(["--torch-threads", "1"]) for _ in range(2)]  # onnxruntime: the default
    try:
        for group in (nodes, ort_nodes):
            for node, part in zip(group, ("p1", "p2"), strict=True):
                with NodeClient(node.address) as c:
                    c.load_partition(str(paths[part][1]), paths[part][0], paths[part][2])
        route = build_route(name, "fp32", division.partitions[1:], {"p1": [nodes[0].address], "p2": [nodes[1].address]})
        ort_route = build_route(
            name, "fp32", division.partitions[1:], {"p1": [ort_nodes[0].address], "p2": [ort_nodes[1].address]}
        )
        client = NodeClient(nodes[0].address)
        ort_client = NodeClient(ort_nodes[0].address)

        def local_run() -> None:
            with torch.no_grad():
                model(x)

        def device_head() -> torch.Tensor:
            return head({program.input_names[0]: x})[head_out]

        def raw() -> None:
            call(device_head().contiguous().numpy().tobytes())

        step_timings: list[list[model_server_pb2.StepTiming]] = []

        def split() -> None:
            header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
            outputs, timings = client.process_wire(header, [encode_wire(device_head(), head_out)], timeout_s=60)
            assert outputs
            step_timings.append(timings)

        def split_ort() -> None:
            header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=ort_route)
            features = ort_head.run({program.input_names[0]: x})[head_out]
            outputs, _ = ort_client.process_wire(header, [encode_wire(features, head_out)], timeout_s=60)
            assert outputs

        # Interleaved rounds, one sample of each path per round, so that drift in the machine's speed
        # (a shared VM) affects the three paths alike.
        paths_to_time = {"local": local_run, "raw": raw, "ours": split, "ours_ort": split_ort}
        for fn in paths_to_time.values():
            time_call(fn, 1, warmup=3)
        step_timings.clear()
        samples: dict[str, list[float]] = {k: [] for k in paths_to_time}
        for _ in range(repeats):
            for label, fn in paths_to_time.items():
                samples[label].extend(time_call(fn, 1, warmup=0))
        client.close()
        ort_client.close()
    finally:
        channel.close()
        a.stop()
        b.stop()
        for node in [*nodes, *ort_nodes]:
            node.stop()
    # The raw servers' compute of the timed calls only (the warm-up's 4 calls come first).
    raw_compute = {part: json.loads(log.read_text())[4:] for part, log in raw_logs.items() if log.exists()}
    return {
        "model": f"{name}@{resolution}",
        "ops": n,
        "cuts": [str(first), str(second)],
        "local_ms": [s * 1e3 for s in samples["local"]],
        "raw_chain_ms": [s * 1e3 for s in samples["raw"]],
        "splitinfer_ms": [s * 1e3 for s in samples["ours"]],
        "splitinfer_ort_ms": [s * 1e3 for s in samples["ours_ort"]],
        # Where the split's time goes on the nodes: per step (p1 on A, p2 on B), each field's samples.
        "splitinfer_steps": _step_breakdown(step_timings),
        # The raw chain's compute of the same partitions (in its handler thread), per call: against the nodes'.
        "raw_compute_ms": raw_compute,
    }


def _step_breakdown(runs: list[list[model_server_pb2.StepTiming]]) -> list[dict[str, Any]]:
    """The nodes' StepTiming of each timed split request, per step: the samples of queue, decode, compute
    and encode milliseconds (medians in the summary)."""
    steps: dict[str, dict[str, Any]] = {}
    for timings in runs:
        for timing in timings:
            row = steps.setdefault(
                timing.partition.partition,
                {"partition": timing.partition.partition, "queue_ms": [], "decode_ms": [], "compute_ms": [],
                 "encode_ms": []},
            )  # fmt: skip
            for field in ("queue_ms", "decode_ms", "compute_ms", "encode_ms"):
                row[field].append(getattr(timing, field))
    return list(steps.values())


def per_hop(
    work: Path, repeats: int, sizes: list[int], chunk_bytes: int = 0, baselines: bool = False
) -> list[dict[str, Any]]:
    """One node hop (a copy partition) against a raw gRPC echo of the same bytes, sampled in alternating
    order (one raw call, one hop, ...) after a warm-up, so that drift affects both alike.

    With ``baselines``, two more raw servers are sampled in the same rounds, to show where the hop's time
    goes (neither is the target's baseline): the same echo on a grpc.aio server (what grpc.aio itself costs
    against the synchronous server, which splitinfer's nodes cannot use: a waiting stream would hold a
    thread), and a synchronous raw server running the same copy partition on the bytes (the work the hop
    cannot skip: one copy into an aligned input, the partition's own copy, one copy out)."""

    class Copy(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t.clone()

    rows = []
    echo = RawServer(work, f"echo{chunk_bytes}")
    channel, call = _raw_call(echo.address)
    aio_echo = RawServer(work, f"aio-echo{chunk_bytes}", aio=True) if baselines else None
    aio_channel, aio_call = _raw_call(aio_echo.address) if aio_echo else (None, None)
    args = ["--torch-threads", "1"]
    if chunk_bytes:
        config = work / f"node-chunks-{chunk_bytes}.json"
        config.write_text(json.dumps({"chunk_bytes": chunk_bytes, "benchmark_s": 0}))
        args += ["--config", str(config)]
    node = spawn_node(args)
    try:
        with NodeClient(node.address, chunk_bytes=chunk_bytes or DEFAULT_CHUNK_BYTES) as client:
            for nbytes in sizes:
                count = max(5, min(repeats, int(4e8 // nbytes)))  # fewer samples of the largest tensors
                t = torch.randn(nbytes // 4)
                program = export_program(Copy(), (t,))
                key = PartitionKey("copy", "fp32", f"p{nbytes}")
                save_partition_artifact(program, key, work / f"copy{nbytes}-{chunk_bytes}")
                client.load_partition(str(work / f"copy{nbytes}-{chunk_bytes}"), key)
                extra: dict[str, Any] = {}
                copier = None
                if baselines:
                    copier = RawServer(work, f"copy{nbytes}", work / f"copy{nbytes}-{chunk_bytes}")
                    copy_channel, copy_call = _raw_call(copier.address)
                    extra = {"raw_aio_echo_ms": aio_call, "raw_copy_partition_ms": copy_call}
                ref = route_pb2.PartitionRef(model=key.model, variant=key.variant, partition=key.partition)
                step = route_pb2.RouteStep(partition=ref, addresses=[node.address])
                route = route_pb2.Route(steps=[step])
                raw_bytes = t.numpy().tobytes()
                name = program.input_names[0]
                # Encoded once (the hop measures transport, not the codec), sent and received as WireTensors
                # as the raw client sends and receives bytes: no protobuf copy on the client either way.
                message = encode_wire(t, name)

                def raw(raw_bytes: bytes = raw_bytes) -> None:
                    call(raw_bytes)

                def hop(route: route_pb2.Route = route, message: Any = message) -> None:
                    header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
                    client.process_wire(header, [message], timeout_s=120)

                others = {label: (lambda c=c, b=raw_bytes: c(b)) for label, c in extra.items()}
                time_call(raw, 1, warmup=2)
                time_call(hop, 1, warmup=2)
                for fn in others.values():
                    time_call(fn, 1, warmup=2)
                raw_samples: list[float] = []
                hop_samples: list[float] = []
                other_samples: dict[str, list[float]] = {label: [] for label in others}
                faults_before = _minor_faults(node.process.pid)  # the node serves only the hops meanwhile
                for _ in range(count):
                    raw_samples += time_call(raw, 1, warmup=0)
                    hop_samples += time_call(hop, 1, warmup=0)
                    for label, fn in others.items():
                        other_samples[label] += time_call(fn, 1, warmup=0)
                node_faults = (_minor_faults(node.process.pid) - faults_before) / count
                if copier is not None:
                    copy_channel.close()
                    copier.stop()
                rows.append(
                    {
                        "bytes": nbytes,
                        "chunk_bytes": chunk_bytes or DEFAULT_CHUNK_BYTES,
                        "raw_echo_ms": [s * 1e3 for s in raw_samples],
                        "splitinfer_hop_ms": [s * 1e3 for s in hop_samples],
                        "node_minor_faults_per_hop": node_faults,
                        **{label: [s * 1e3 for s in samples] for label, samples in other_samples.items()},
                    }
                )
    finally:
        channel.close()
        echo.stop()
        if aio_echo is not None and aio_channel is not None:
            aio_channel.close()
            aio_echo.stop()
        node.stop()
    return rows


def _minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (Linux /proc; 0 elsewhere): a fresh buffer faulted in page by page
    is what separates a hop's copies from a copy into warm memory."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[7])  # minflt, the 10th field of stat


def hop_summary(row: dict[str, Any]) -> dict[str, Any]:
    """Medians, p95 and the targets of one per-hop row: throughput >= 0.8x raw from 1 MiB up, a 4 KiB hop
    <= 1.3x raw."""
    raw, ours = median(row["raw_echo_ms"]), median(row["splitinfer_hop_ms"])
    summary = {
        "bytes": row["bytes"], "chunk_bytes": row["chunk_bytes"], "raw_echo_ms": raw, "splitinfer_hop_ms": ours,
        "raw_echo_p95_ms": _percentile(row["raw_echo_ms"], 0.95),
        "splitinfer_hop_p95_ms": _percentile(row["splitinfer_hop_ms"], 0.95),
        "raw_mb_s": row["bytes"] / raw / 1e3, "splitinfer_mb_s": row["bytes"] / ours / 1e3,
        "throughput_ratio": raw / ours, "latency_ratio": ours / raw,
        "node_minor_faults_per_hop": row.get("node_minor_faults_per_hop", 0.0),
    }  # fmt: skip
    for label in ("raw_aio_echo_ms", "raw_copy_partition_ms"):  # where the time goes; not the target's baseline
        if label in row:
            floor = median(row[label])
            summary[label] = floor
            summary[label.replace("_ms", "_p95_ms")] = _percentile(row[label], 0.95)
            summary[label.replace("_ms", "_throughput_ratio")] = floor / ours
    if row["bytes"] >= 1 << 20:
        summary["target"] = f"throughput >= {HOP_THROUGHPUT_TARGET}x raw"
        summary["target_met"] = summary["throughput_ratio"] >= HOP_THROUGHPUT_TARGET
    elif row["bytes"] <= 4 << 10:
        summary["target"] = f"latency <= {SMALL_HOP_LATENCY_TARGET}x raw"
        summary["target_met"] = summary["latency_ratio"] <= SMALL_HOP_LATENCY_TARGET
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64x64 input and few repeats (CI smoke run)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"))
    parser.add_argument(
        "--chunk-sweep", type=int, nargs="*", default=None, metavar="BYTES",
        help="also time the per-hop sizes >= 1 MiB with these chunk sizes (none given: 256 KiB to 4 MiB; the "
        "default without --quick)",
    )  # fmt: skip
    parser.add_argument("--no-end-to-end", action="store_true", help="per-hop measurements only")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODELS), default=list(MODELS), help="end-to-end models (default: all)"
    )
    parser.add_argument("--no-per-hop", action="store_true", help="end-to-end measurements only")
    parser.add_argument("--no-chunk-sweep", action="store_true", help="skip the chunk-size sweep")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # This process is the client of every path compared (raw and splitinfer alike): the same allocator
    # settings as the servers, so that no path's client pays page faults the others do not.
    defaults = NodeConfig()
    apply_malloc_policy(
        defaults.malloc_mmap_threshold_bytes, defaults.malloc_trim_threshold_bytes, defaults.malloc_arena_max
    )
    resolution, repeats = (64, 3) if args.quick else (224, args.repeats)
    sizes = [4 << 10, 64 << 10] if args.quick else [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
    default_sweep = [256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20]
    sweep = args.chunk_sweep
    if sweep is None:
        sweep = [] if args.quick else default_sweep
    elif not sweep:  # the flag alone
        sweep = default_sweep
    with tempfile.TemporaryDirectory() as tmp:
        runs = [] if args.no_end_to_end else [end_to_end(Path(tmp), name, resolution, repeats) for name in args.models]
        hops = [] if args.no_per_hop else per_hop(Path(tmp), repeats * 3, sizes, baselines=True)
        big = [n for n in sizes if n >= 1 << 20] or sizes[-1:]
        if args.no_per_hop or args.no_chunk_sweep:
            sweep = []
        chunk_rows = [row for chunk in sweep for row in per_hop(Path(tmp), repeats, big, chunk)]
    hop_summaries = [hop_summary(row) for row in hops]
    chunk_summaries = [hop_summary(row) for row in chunk_rows]
    summaries = []
    for e2e in runs:
        local, raw, ours = (median(e2e[k]) for k in ("local_ms", "raw_chain_ms", "splitinfer_ms"))
        ort = median(e2e["splitinfer_ort_ms"])
        ort_target = ORT_TARGETS.get(e2e["model"].split("@")[0])
        summaries.append({
            "model": e2e["model"], "local_ms": local, "raw_chain_ms": raw, "splitinfer_ms": ours,
            "splitinfer_ort_ms": ort,
            "local_p95_ms": _percentile(e2e["local_ms"], 0.95),
            "raw_chain_p95_ms": _percentile(e2e["raw_chain_ms"], 0.95),
            "splitinfer_p95_ms": _percentile(e2e["splitinfer_ms"], 0.95),
            "splitinfer_ort_p95_ms": _percentile(e2e["splitinfer_ort_ms"], 0.95),
            "raw_ratio": raw / local, "splitinfer_ratio": ours / local, "target_ratio": TARGET_RATIO,
            # The target is stated for the ResNet-18 shape; the ResNet-50 shape is reported alongside.
            "target_met": ours / local <= TARGET_RATIO if e2e["model"].startswith("resnet18") else None,
            # On onnxruntime (device head and nodes), the split must beat the whole model in local torch.
            "splitinfer_ort_ratio": ort / local, "ort_target_ratio": ort_target,
            "ort_target_met": ort / local <= ort_target if ort_target is not None else None,
            "splitinfer_steps": [
                {"partition": row["partition"], **{k: median(v) for k, v in row.items() if k.endswith("_ms")},
                 "raw_compute_ms": median(e2e["raw_compute_ms"].get(row["partition"]) or [float("nan")])}
                for row in e2e["splitinfer_steps"]
            ],
        })  # fmt: skip
    write_json(args.out, {"benchmark": "pipeline", "machine": machine_info(),
                          "parameters": {"resolution": resolution, "repeats": repeats, "torch_threads": 1},
                          "end_to_end": runs, "summaries": summaries, "per_hop": hops,
                          "per_hop_summaries": hop_summaries, "chunk_sweep": chunk_summaries})  # fmt: skip
    console = Console(width=120)
    for e2e, summary in zip(runs, summaries, strict=True):
        table = Table(title=f"{e2e['model']}: device p0, then A -> B ({', '.join(e2e['cuts'])}), 1 thread")
        for column in ("path", "median ms", "p95 ms", "x local torch"):
            table.add_column(column, justify="right")
        rows = (
            ("local torch", "local"), ("raw gRPC chain", "raw_chain"),
            ("splitinfer, interpreter", "splitinfer"), ("splitinfer, onnxruntime", "splitinfer_ort"),
        )  # fmt: skip
        for label, key in rows:
            table.add_row(label, f"{summary[key + '_ms']:.2f}", f"{summary[key + '_p95_ms']:.2f}",
                          f"{summary[key + '_ms'] / summary['local_ms']:.3f}")  # fmt: skip
        console.print(table)
        for step in summary["splitinfer_steps"]:
            console.print(
                f"  {step['partition']}: queue {step['queue_ms']:.2f}  decode {step['decode_ms']:.2f}  "
                f"compute {step['compute_ms']:.2f} (raw chain's {step['raw_compute_ms']:.2f})  "
                f"encode {step['encode_ms']:.2f} ms (medians, node StepTiming)"
            )
    hop_table = Table(title="per hop: one node, copy partition, vs raw gRPC echo of the same bytes (medians)")
    columns = ("bytes", "chunk", "raw echo ms", "aio echo ms", "raw+copy ms", "hop ms", "hop p95 ms", "raw MB/s",
               "hop MB/s", "node faults/hop", "target")  # fmt: skip
    for column in columns:
        hop_table.add_column(column, justify="right")
    for row in [*hop_summaries, *chunk_summaries]:
        verdict = "" if "target" not in row else f"{row['target']}: {'met' if row['target_met'] else 'NOT met'}"
        aio = f"{row['raw_aio_echo_ms']:.3f}" if "raw_aio_echo_ms" in row else ""
        copy = f"{row['raw_copy_partition_ms']:.3f}" if "raw_copy_partition_ms" in row else ""
        hop_table.add_row(f"{row['bytes']:,}", f"{row['chunk_bytes'] >> 10} KiB", f"{row['raw_echo_ms']:.3f}", aio,
                          copy, f"{row['splitinfer_hop_ms']:.3f}", f"{row['splitinfer_hop_p95_ms']:.3f}",
                          f"{row['raw_mb_s']:.0f}", f"{row['splitinfer_mb_s']:.0f}",
                          f"{row['node_minor_faults_per_hop']:.0f}", verdict)  # fmt: skip
    if hop_summaries or chunk_summaries:
        console.print(hop_table)
    if summaries:
        resnet18_summary = summaries[0]
        verdict = "met" if resnet18_summary["target_met"] else "NOT met"
        console.print(
            f"target splitinfer <= {TARGET_RATIO}x local torch (resnet18): "
            f"{resnet18_summary['splitinfer_ratio']:.3f}x ({verdict})"
        )
        for summary in summaries:
            if summary["ort_target_ratio"] is not None:
                console.print(
                    f"target splitinfer on onnxruntime <= {summary['ort_target_ratio']}x local torch "
                    f"({summary['model']}): {summary['splitinfer_ort_ratio']:.3f}x "
                    f"({'met' if summary['ort_target_met'] else 'NOT met'})"
                )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
