"""splitinfer's chain against local torch and a hand-rolled raw gRPC chain, in one run on one machine.

1. End to end, ResNet-18- and ResNet-50-shaped at 224x224, batch 1, one torch thread everywhere, split in
   three at narrow cuts near a third and two thirds of the FLOPs: the device (this process) runs p0, then
   (a) nothing else: the whole model in local torch; (b) raw gRPC chain A (p1) -> B (p2) passing float32
   bytes (the floor); (c) splitinfer: node A (p1) -> node B (p2), codec none. The three are timed in
   interleaved rounds (one sample of each per round); median and p95.
2. Per hop: float32 tensors from 4 KiB to 64 MiB through one splitinfer node running a copy partition,
   against a raw gRPC echo of the same bytes: added latency and throughput.

    python benchmarks/pipeline.py --out benchmarks/results/pipeline.json
"""

from __future__ import annotations

import argparse
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
from server_node.process import spawn_node
from splitinfer.codecs import encode_tensor
from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.program import CompiledProgram, export_program
from splitinfer.routing import build_route
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.v1 import model_server_pb2, route_pb2
from splitinfer.zoo import resnet18, resnet50

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 1.15


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RawServer:
    def __init__(self, work: Path, name: str, program: Path | None = None, next_address: str = "") -> None:
        port_file = work / f"{name}.port"
        command = [sys.executable, str(HERE / "_raw_chain.py"), "--port-file", str(port_file)]
        if program:
            command += ["--program", str(program)]
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
    paths = {}
    for part in division.partitions:
        key = PartitionKey(name, "fp32", part.name)
        save_partition_artifact(division.partition_program(part.name), key, work / f"{name}-{part.name}")
        paths[part.name] = (key, work / f"{name}-{part.name}")
    head = CompiledProgram(division.partition_program("p0"))
    head_out = division.partitions[0].outputs[0].name

    b = RawServer(work, f"{name}-rawB", paths["p2"][1])
    a = RawServer(work, f"{name}-rawA", paths["p1"][1], b.address)
    channel, call = _raw_call(a.address)
    nodes = [spawn_node(["--torch-threads", "1"]) for _ in range(2)]
    try:
        for node, part in zip(nodes, ("p1", "p2"), strict=True):
            with NodeClient(node.address) as c:
                c.load_partition(str(paths[part][1]), paths[part][0])
        route = build_route(name, "fp32", division.partitions[1:], {"p1": [nodes[0].address], "p2": [nodes[1].address]})
        client = NodeClient(nodes[0].address)

        def local_run() -> None:
            with torch.no_grad():
                model(x)

        def device_head() -> torch.Tensor:
            return head({program.input_names[0]: x})[head_out]

        def raw() -> None:
            call(device_head().contiguous().numpy().tobytes())

        def split() -> None:
            header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
            outputs, _ = client.process(header, [encode_tensor(device_head(), head_out)], timeout_s=60)
            assert outputs

        # Interleaved rounds, one sample of each path per round, so that drift in the machine's speed
        # (a shared VM) affects the three paths alike.
        paths_to_time = {"local": local_run, "raw": raw, "ours": split}
        for fn in paths_to_time.values():
            time_call(fn, 1, warmup=3)
        samples: dict[str, list[float]] = {k: [] for k in paths_to_time}
        for _ in range(repeats):
            for label, fn in paths_to_time.items():
                samples[label].extend(time_call(fn, 1, warmup=0))
        client.close()
    finally:
        channel.close()
        a.stop()
        b.stop()
        for node in nodes:
            node.stop()
    return {
        "model": f"{name}@{resolution}",
        "ops": n,
        "cuts": [str(first), str(second)],
        "local_ms": [s * 1e3 for s in samples["local"]],
        "raw_chain_ms": [s * 1e3 for s in samples["raw"]],
        "splitinfer_ms": [s * 1e3 for s in samples["ours"]],
    }


def per_hop(work: Path, repeats: int, sizes: list[int]) -> list[dict[str, Any]]:
    class Copy(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t.clone()

    rows = []
    echo = RawServer(work, "echo")
    channel, call = _raw_call(echo.address)
    node = spawn_node(["--torch-threads", "1"])
    try:
        with NodeClient(node.address) as client:
            for nbytes in sizes:
                count = max(5, min(repeats, int(4e8 // nbytes)))  # fewer samples of the largest tensors
                t = torch.randn(nbytes // 4)
                program = export_program(Copy(), (t,))
                key = PartitionKey("copy", "fp32", f"p{nbytes}")
                save_partition_artifact(program, key, work / f"copy{nbytes}")
                client.load_partition(str(work / f"copy{nbytes}"), key)
                ref = route_pb2.PartitionRef(model=key.model, variant=key.variant, partition=key.partition)
                route = route_pb2.Route(steps=[route_pb2.RouteStep(partition=ref, addresses=[node.address])])
                raw_bytes = t.numpy().tobytes()
                raw = time_call(lambda raw_bytes=raw_bytes: call(raw_bytes), count, warmup=2)

                def hop(
                    t: torch.Tensor = t, route: route_pb2.Route = route, name: str = program.input_names[0]
                ) -> None:
                    header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
                    client.process(header, [encode_tensor(t, name)], timeout_s=120)

                ours = time_call(hop, count, warmup=2)
                rows.append(
                    {
                        "bytes": nbytes,
                        "raw_echo_ms": [s * 1e3 for s in raw],
                        "splitinfer_hop_ms": [s * 1e3 for s in ours],
                    }
                )
    finally:
        channel.close()
        echo.stop()
        node.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64x64 input and few repeats (CI smoke run)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    resolution, repeats = (64, 3) if args.quick else (224, args.repeats)
    sizes = [4 << 10, 64 << 10] if args.quick else [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [end_to_end(Path(tmp), name, resolution, repeats) for name in MODELS]
        hops = per_hop(Path(tmp), repeats * 3, sizes)
    summaries = []
    for e2e in runs:
        local, raw, ours = (median(e2e[k]) for k in ("local_ms", "raw_chain_ms", "splitinfer_ms"))
        summaries.append({
            "model": e2e["model"], "local_ms": local, "raw_chain_ms": raw, "splitinfer_ms": ours,
            "local_p95_ms": _percentile(e2e["local_ms"], 0.95),
            "raw_chain_p95_ms": _percentile(e2e["raw_chain_ms"], 0.95),
            "splitinfer_p95_ms": _percentile(e2e["splitinfer_ms"], 0.95),
            "raw_ratio": raw / local, "splitinfer_ratio": ours / local, "target_ratio": TARGET_RATIO,
            # The target is stated for the ResNet-18 shape; the ResNet-50 shape is reported alongside.
            "target_met": ours / local <= TARGET_RATIO if e2e["model"].startswith("resnet18") else None,
        })  # fmt: skip
    write_json(args.out, {"benchmark": "pipeline", "machine": machine_info(),
                          "parameters": {"resolution": resolution, "repeats": repeats, "torch_threads": 1},
                          "end_to_end": runs, "summaries": summaries, "per_hop": hops})  # fmt: skip
    console = Console(width=120)
    for e2e, summary in zip(runs, summaries, strict=True):
        table = Table(title=f"{e2e['model']}: device p0, then A -> B ({', '.join(e2e['cuts'])}), 1 thread")
        for column in ("path", "median ms", "p95 ms", "x local torch"):
            table.add_column(column, justify="right")
        for label, key in (("local torch", "local"), ("raw gRPC chain", "raw_chain"), ("splitinfer", "splitinfer")):
            table.add_row(label, f"{summary[key + '_ms']:.2f}", f"{summary[key + '_p95_ms']:.2f}",
                          f"{summary[key + '_ms'] / summary['local_ms']:.3f}")  # fmt: skip
        console.print(table)
    hop_table = Table(title="per hop: one node, copy partition, vs raw gRPC echo of the same bytes")
    for column in ("bytes", "raw echo ms", "splitinfer hop ms", "added ms", "splitinfer MB/s"):
        hop_table.add_column(column, justify="right")
    for row in hops:
        raw_hop, our_hop = median(row["raw_echo_ms"]), median(row["splitinfer_hop_ms"])
        hop_table.add_row(f"{row['bytes']:,}", f"{raw_hop:.3f}", f"{our_hop:.3f}", f"{our_hop - raw_hop:.3f}",
                          f"{row['bytes'] / our_hop / 1e3:.0f}")  # fmt: skip
    console.print(hop_table)
    resnet18_summary = summaries[0]
    verdict = "met" if resnet18_summary["target_met"] else "NOT met"
    console.print(
        f"target splitinfer <= {TARGET_RATIO}x local torch (resnet18): {resnet18_summary['splitinfer_ratio']:.3f}x"
        f" ({verdict})"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
