"""splitinfer's chain against local torch and a hand-rolled raw gRPC chain, in one run on one machine.

1. End to end, ResNet-18-shaped at 224x224, batch 1, one torch thread everywhere, split in two at its
   narrowest mid-network cut: (a) the whole model in local torch; (b) raw gRPC chain client -> A -> B
   passing float32 bytes (the floor); (c) splitinfer: client -> node A (p0) -> node B (p1), codec none.
   The three are timed in interleaved rounds (one sample of each per round).
2. Per hop: a 4 KiB and a 4 MiB float32 tensor through one splitinfer node running a copy partition,
   against a raw gRPC echo of the same bytes.

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
from splitinfer.program import export_program
from splitinfer.routing import build_route
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.v1 import model_server_pb2, route_pb2
from splitinfer.zoo import resnet18

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


def end_to_end(work: Path, resolution: int, repeats: int) -> dict[str, Any]:
    model, (x,) = resnet18(resolution)
    program = export_program(model, (x,))
    graph = ModelGraph.build(program, (x,))
    n = len(graph.nodes)
    middle = min(narrow_cuts(graph)[1:-1], key=lambda c: abs(c.flops_before - graph.total_flops / 2))
    division = partition_at(graph, "resnet18", [middle.position])
    paths = {}
    for part in division.partitions:
        key = PartitionKey("resnet18", "fp32", part.name)
        save_partition_artifact(division.partition_program(part.name), key, work / part.name)
        paths[part.name] = (key, work / part.name)

    b = RawServer(work, "rawB", paths["p1"][1])
    a = RawServer(work, "rawA", paths["p0"][1], b.address)
    channel, call = _raw_call(a.address)
    raw_in = x.numpy().tobytes()
    nodes = [spawn_node(["--torch-threads", "1"]) for _ in range(2)]
    try:
        for node, part in zip(nodes, ("p0", "p1"), strict=True):
            with NodeClient(node.address) as c:
                c.load_partition(str(paths[part][1]), paths[part][0])
        route = build_route(
            "resnet18", "fp32", division.partitions, {"p0": [nodes[0].address], "p1": [nodes[1].address]}
        )
        client = NodeClient(nodes[0].address)
        tensor = encode_tensor(x, program.input_names[0])

        def local_run() -> None:
            with torch.no_grad():
                model(x)

        def split() -> None:
            header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
            outputs, _ = client.process(header, [tensor], timeout_s=60)
            assert outputs

        # Interleaved rounds, one sample of each path per round, so that drift in the machine's speed
        # (a shared VM) affects the three paths alike.
        paths_to_time = {"local": local_run, "raw": lambda: call(raw_in), "ours": split}
        for fn in paths_to_time.values():
            time_call(fn, 1, warmup=3)
        samples: dict[str, list[float]] = {k: [] for k in paths_to_time}
        for _ in range(repeats):
            for name, fn in paths_to_time.items():
                samples[name].extend(time_call(fn, 1, warmup=0))
        local, raw, ours = samples["local"], samples["raw"], samples["ours"]
        client.close()
    finally:
        channel.close()
        a.stop()
        b.stop()
        for node in nodes:
            node.stop()
    return {
        "model": f"resnet18@{resolution}",
        "ops": n,
        "cut": str(middle),
        "local_ms": [s * 1e3 for s in local],
        "raw_chain_ms": [s * 1e3 for s in raw],
        "splitinfer_ms": [s * 1e3 for s in ours],
    }


def per_hop(work: Path, repeats: int) -> list[dict[str, Any]]:
    class Copy(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t.clone()

    rows = []
    echo = RawServer(work, "echo")
    channel, call = _raw_call(echo.address)
    node = spawn_node(["--torch-threads", "1"])
    try:
        with NodeClient(node.address) as client:
            for nbytes in (4 << 10, 4 << 20):
                t = torch.randn(nbytes // 4)
                program = export_program(Copy(), (t,))
                key = PartitionKey("copy", "fp32", f"p{nbytes}")
                save_partition_artifact(program, key, work / f"copy{nbytes}")
                client.load_partition(str(work / f"copy{nbytes}"), key)
                ref = route_pb2.PartitionRef(model=key.model, variant=key.variant, partition=key.partition)
                route = route_pb2.Route(steps=[route_pb2.RouteStep(partition=ref, addresses=[node.address])])
                raw_bytes = t.numpy().tobytes()
                raw = time_call(lambda raw_bytes=raw_bytes: call(raw_bytes), repeats, warmup=3)

                def hop(
                    t: torch.Tensor = t, route: route_pb2.Route = route, name: str = program.input_names[0]
                ) -> None:
                    header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
                    client.process(header, [encode_tensor(t, name)], timeout_s=30)

                ours = time_call(hop, repeats, warmup=3)
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
    with tempfile.TemporaryDirectory() as tmp:
        e2e = end_to_end(Path(tmp), resolution, repeats)
        hops = per_hop(Path(tmp), repeats * 3)
    local, raw, ours = (median(e2e[k]) for k in ("local_ms", "raw_chain_ms", "splitinfer_ms"))
    summary = {
        "local_ms": local, "raw_chain_ms": raw, "splitinfer_ms": ours,
        "splitinfer_p95_ms": _percentile(e2e["splitinfer_ms"], 0.95),
        "raw_ratio": raw / local, "splitinfer_ratio": ours / local, "target_ratio": TARGET_RATIO,
        "target_met": ours / local <= TARGET_RATIO,
    }  # fmt: skip
    write_json(args.out, {"benchmark": "pipeline", "machine": machine_info(),
                          "parameters": {"resolution": resolution, "repeats": repeats, "torch_threads": 1},
                          "end_to_end": e2e, "summary": summary, "per_hop": hops})  # fmt: skip
    console = Console(width=120)
    table = Table(title=f"{e2e['model']} split in two ({e2e['cut']}), 1 thread, median of {repeats}")
    for column in ("path", "median ms", "p95 ms", "x local torch"):
        table.add_column(column, justify="right")
    for label, key in (
        ("local torch", "local_ms"),
        ("raw gRPC chain", "raw_chain_ms"),
        ("splitinfer", "splitinfer_ms"),
    ):
        samples = e2e[key]
        table.add_row(
            label, f"{median(samples):.2f}", f"{_percentile(samples, 0.95):.2f}", f"{median(samples) / local:.3f}"
        )
    console.print(table)
    hop_table = Table(title="per hop: one node, copy partition, vs raw gRPC echo of the same bytes")
    for column in ("bytes", "raw echo ms", "splitinfer hop ms", "added ms"):
        hop_table.add_column(column, justify="right")
    for row in hops:
        raw_hop, our_hop = median(row["raw_echo_ms"]), median(row["splitinfer_hop_ms"])
        hop_table.add_row(f"{row['bytes']:,}", f"{raw_hop:.3f}", f"{our_hop:.3f}", f"{our_hop - raw_hop:.3f}")
    console.print(hop_table)
    verdict = "met" if summary["target_met"] else "NOT met"
    console.print(f"target splitinfer <= {TARGET_RATIO}x local torch: {summary['splitinfer_ratio']:.3f}x ({verdict})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
