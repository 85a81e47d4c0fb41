"""Load and concurrency benchmark: N devices for T seconds against a real cluster on loopback.

etcd, two server nodes (each hosting every partition of a ResNet-style CNN) and the front-end run as their
own processes. For each concurrency level (devices = client threads, each sending requests back to back as a
thin client that runs nothing itself), the run reports requests/s, errors, p50/p99 latency and the peak
resident memory of every component (sampled every 100 ms). It stops by itself after each level's duration.

Targets: throughput does not fall as concurrency rises (within 10% run-to-run noise), and every
component's peak memory stays under 1 GiB.

    python benchmarks/load.py --out benchmarks/results/load.json [--levels 1 4 16] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import psutil
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine_info, write_json

from server_node.process import NodeProcess, spawn_node
from splitinfer.codecs import TensorAssembler, encode_tensor
from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.registry import EtcdRegistry
from splitinfer.registry.etcd_server import start_etcd
from splitinfer.runtime import PartitionKey
from splitinfer.transport.channel import channel_options
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, model_server_pb2, model_server_pb2_grpc, plan_pb2
from splitinfer.zoo import build

MODEL = "residual_cnn"
MEMORY_LIMIT_BYTES = 1 << 30


class Sampler:
    """Peak RSS of each process, sampled in the background."""

    def __init__(self, processes: dict[str, int], interval_s: float = 0.1) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.peak = dict.fromkeys(processes, 0)
        self._stop = threading.Event()
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for name, process in self._processes.items():
                with contextlib.suppress(psutil.Error):
                    self.peak[name] = max(self.peak[name], process.memory_info().rss)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _device(index: int) -> plan_pb2.DeviceState:
    return plan_pb2.DeviceState(device_id=f"load-{index}", compute_flops=0, uplink_mbps=1000, rtt_ms=0.2)


async def _device_loop(address: str, index: int, tensor: Any, until: float, out: dict[str, Any]) -> None:
    """One device: its own connection, requests back to back until ``until``."""
    device = _device(index)
    latencies, errors = [], 0
    async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
        stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
        plan = (await stub.Plan(frontend_pb2.PlanRequest(model=MODEL, device=device), timeout=30)).plan
        while time.monotonic() < until:
            header = frontend_pb2.InferHeader(
                request_id=uuid.uuid4().hex, device=device, plan_id=plan.plan_id, timeout_ms=30_000
            )
            messages = [frontend_pb2.InferRequest(header=header), frontend_pb2.InferRequest(tensor=tensor)]
            start = time.perf_counter()
            try:
                assembler, got = TensorAssembler(), 0
                async for response in stub.Infer(iter(messages), timeout=30):
                    kind = response.WhichOneof("kind")
                    if kind in ("tensor", "chunk") and assembler.add(getattr(response, kind)) is not None:
                        got += 1
                if got == 0:
                    raise RuntimeError("no output")
                latencies.append(time.perf_counter() - start)
            except Exception:
                errors += 1
    out[f"device{index}"] = (latencies, errors)


async def _idle_stream(channel: grpc.aio.Channel, until: float, closed: list[int]) -> None:
    """One stream that opens Process on a node and never sends anything; when the node closes it (its
    first-message timeout), it opens another, so the node has it open for the whole run."""
    stub = model_server_pb2_grpc.ModelServerServiceStub(channel)

    async def nothing() -> Any:
        await asyncio.sleep(3600)
        yield model_server_pb2.ProcessRequest()

    while time.monotonic() < until:
        call = stub.Process(nothing(), timeout=max(0.1, until - time.monotonic()))
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            if "server closed the stream" in (exc.details() or ""):
                closed[0] += 1  # the node's first-message timeout, not the end of the run


async def _devices(
    address: str, devices: int, seconds: float, tensor: Any, out: dict[str, Any], idle: int = 0,
    idle_targets: tuple[str, ...] = (),
) -> int:  # fmt: skip
    """Runs the devices (and ``idle`` idle streams spread over ``idle_targets``); returns how many idle
    streams the servers closed."""
    closed = [0]
    channels = [grpc.aio.insecure_channel(t, options=channel_options()) for t in idle_targets for _ in range(2)]
    held_until = time.monotonic() + seconds + (0.5 if idle else 0.0)
    idlers = [asyncio.create_task(_idle_stream(channels[k % len(channels)], held_until, closed)) for k in range(idle)]
    if idlers:
        await asyncio.sleep(0.5)  # the idle streams are open before the first request
    start = time.perf_counter()
    until = time.monotonic() + seconds
    await asyncio.gather(*(_device_loop(address, k, tensor, until, out) for k in range(devices)))
    out["_elapsed_s"] = time.perf_counter() - start
    for task in idlers:
        task.cancel()
    await asyncio.gather(*idlers, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return closed[0]


def run_level(address: str, devices: int, seconds: float, x: torch.Tensor, input_name: str,
              processes: dict[str, int], idle: int = 0,
              idle_targets: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """``devices`` concurrent devices, driven by one asyncio loop (threads would add GIL contention on
    the load generator's side of a small machine), beside ``idle`` streams that hold the nodes open."""
    results: dict[str, Any] = {}
    tensor = encode_tensor(x, input_name)
    with Sampler(processes) as sampler:
        closed = asyncio.run(_devices(address, devices, seconds, tensor, results, idle, idle_targets))
        elapsed = results.pop("_elapsed_s")  # the devices' own time, not the idle streams' set-up
    latencies = sorted(s for samples, _ in results.values() for s in samples)
    errors = sum(e for _, e in results.values())
    quantile = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else 0.0  # noqa: E731
    return {
        "devices": devices,
        "idle_streams": idle,
        "idle_streams_closed_by_servers": closed,
        "seconds": elapsed,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": quantile(0.5),
        "p95_ms": quantile(0.95),
        "p99_ms": quantile(0.99),
        "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else 0.0,
        "peak_rss_bytes": dict(sampler.peak),
        "latencies_ms": [s * 1e3 for s in latencies],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument(
        "--idle-streams", type=int, default=200,
        help="idle Process streams held open on the nodes during an extra run beside --idle-devices devices",
    )  # fmt: skip
    parser.add_argument("--idle-devices", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="times each level runs, in alternating order")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="levels 1 and 4, 2 s each (CI smoke run)")
    parser.add_argument(
        "--max-batch-size", type=int, default=1,
        help="nodes batch concurrent requests per partition up to this many rows (1: no batching)",
    )  # fmt: skip
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0, help="longest a request waits for its batch")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.seconds, args.idle_streams, args.idle_devices, args.rounds = [1, 4], 2.0, 50, 4, 1
    console = Console(width=140)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="splitinfer-load-"))
    etcd = start_etcd(work / "etcd")
    nodes: list[NodeProcess] = []
    frontend = None
    idle_runs: list[dict[str, Any]] = []
    batching: list[dict[str, Any]] = []
    try:
        model, example = build(MODEL)
        program = export_program(model, example)
        graph = ModelGraph.build(program, example)
        cuts = [c.position for c in narrow_cuts(graph)][1:-1]
        pool = ModelPool(work / "pool")
        sha = pool.add_division(partition_at(graph, MODEL, cuts[:: max(1, len(cuts) // 2)]), variant="fp32",
                                division_name="default")  # fmt: skip
        node_config = work / "node.json"
        node_config.write_text(
            json.dumps({"max_batch_size": args.max_batch_size, "max_queue_delay_ms": args.max_queue_delay_ms})
        )
        for _ in range(2):
            nodes.append(spawn_node(["--registry", f"etcd://{etcd.endpoint}", "--torch-threads", "1",
                                     "--config", str(node_config)], log_dir=work))  # fmt: skip
        parts = [p["name"] for p in pool.manifest(sha)["partitions"]]
        for part in parts:
            target = work / "exports" / part
            part_sha = pool.export_partition(sha, part, target)
            for node in nodes:
                with NodeClient(node.address) as client:
                    client.load_partition(str(target), PartitionKey(MODEL, "fp32", part), part_sha)
        registry = EtcdRegistry(etcd.endpoint)
        while any(len(registry.replicas(f"{MODEL}@fp32/{p}")) < 2 for p in parts):
            time.sleep(0.1)
        registry.close()
        port_file = work / "frontend.port"
        frontend = subprocess.Popen(
            [sys.executable, "-m", "splitinfer.frontend", "--pool-dir", str(pool.root), "--results-db",
             str(work / "results.db"), "--registry", f"etcd://{etcd.endpoint}", "--port-file", str(port_file),
             "--log-level", "WARNING"],
        )  # fmt: skip
        while not port_file.exists():
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text()}"
        processes = {"front-end": frontend.pid, "etcd": etcd.process.pid}
        processes.update({f"node{k}": n.process.pid for k, n in enumerate(nodes)})
        run_level(address, 1, 1.0, example[0], program.input_names[0], processes)  # warm-up, not reported
        # Levels in alternating order over the rounds (1 4 16 64, then 64 16 4 1, ...), pooled per level, so
        # that drift of a shared machine does not masquerade as a trend with concurrency.
        runs: dict[int, list[dict[str, Any]]] = {d: [] for d in args.levels}
        for round_index in range(args.rounds):
            order = args.levels if round_index % 2 == 0 else list(reversed(args.levels))
            for d in order:
                runs[d].append(run_level(address, d, args.seconds, example[0], program.input_names[0], processes))
        levels = [_pooled(runs[d]) for d in args.levels]
        for node in nodes:  # what each node's partitions ran on, and how its batcher grouped requests
            with NodeClient(node.address) as client:
                batching.extend(
                    {"node": node.address, "partition": h.partition.partition, "runtime": h.runtime,
                     "completed": h.completed, "batches": h.batches, "batched_requests": h.batched_requests,
                     "largest_batch_requests": h.largest_batch_requests}
                    for h in client.status().partitions
                )  # fmt: skip
        if args.idle_streams:
            # The same device count without and with the idle streams, alternated twice: the ratio of their
            # p99 is what the idle streams cost good requests.
            for idle in (0, args.idle_streams, 0, args.idle_streams):
                idle_runs.append(run_level(address, args.idle_devices, args.seconds, example[0],
                                           program.input_names[0], processes, idle,
                                           tuple(n.address for n in nodes)))  # fmt: skip
    finally:
        if frontend is not None:
            frontend.terminate()
            frontend.wait(timeout=20)
        for node in nodes:
            node.stop()
        etcd.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"load: {MODEL} over 2 nodes, thin clients on loopback")
    for column in ("devices", "req/s", "errors", "p50 ms", "p95 ms", "p99 ms", "peak RSS (MiB) per component"):
        table.add_column(column, justify="right")
    for level in levels:
        rss = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in level["peak_rss_bytes"].items())
        table.add_row(str(level["devices"]), f"{level['throughput_rps']:.1f}", str(level["errors"]),
                      f"{level['p50_ms']:.1f}", f"{level['p95_ms']:.1f}", f"{level['p99_ms']:.1f}", rss)  # fmt: skip
    console.print(table)
    idle_summary: dict[str, Any] = {}
    if idle_runs:
        idle_table = Table(
            title=f"{args.idle_devices} devices without and with {args.idle_streams} idle streams on the nodes"
        )
        for column in ("idle streams", "req/s", "errors", "p50 ms", "p99 ms", "idle closed by nodes"):
            idle_table.add_column(column, justify="right")
        for run in idle_runs:
            idle_table.add_row(str(run["idle_streams"]), f"{run['throughput_rps']:.1f}", str(run["errors"]),
                               f"{run['p50_ms']:.1f}", f"{run['p99_ms']:.1f}",
                               str(run["idle_streams_closed_by_servers"]))  # fmt: skip
        console.print(idle_table)
        quiet = [r for r in idle_runs if not r["idle_streams"]]
        busy = [r for r in idle_runs if r["idle_streams"]]
        p99 = lambda runs: _quantile(sorted(v for r in runs for v in r["latencies_ms"]), 0.99)  # noqa: E731
        idle_summary = {
            "p99_without_ms": p99(quiet), "p99_with_ms": p99(busy), "p99_ratio": p99(busy) / max(p99(quiet), 1e-9),
            "errors_with_idle": sum(r["errors"] for r in busy),
        }  # fmt: skip
        console.print(f"p99 with idle streams / without: {idle_summary['p99_ratio']:.2f} (target <= 2)")
    throughputs = [level["throughput_rps"] for level in levels]
    non_decreasing = all(b >= 0.9 * a for a, b in itertools.pairwise(throughputs))
    bounded = all(v < MEMORY_LIMIT_BYTES for level in levels for v in level["peak_rss_bytes"].values())
    no_errors = all(level["errors"] == 0 for level in levels)
    targets = {
        "throughput_non_decreasing": non_decreasing,
        "memory_bounded_1GiB": bounded,
        "no_errors": no_errors,
    }
    if idle_summary:
        targets["idle_streams_p99_within_2x"] = idle_summary["p99_ratio"] <= 2.0
        targets["idle_streams_no_errors"] = idle_summary["errors_with_idle"] == 0
    if args.max_batch_size > 1:
        served = sum(b["batched_requests"] for b in batching)
        runs = sum(b["batches"] for b in batching)
        console.print(f"dynamic batching: {served} requests in {runs} runs ({served / max(runs, 1):.2f} per run)")
    console.print(f"targets: {targets}")
    write_json(args.out, {
        "benchmark": "load", "machine": machine_info(), "model": MODEL, "nodes": 2, "seconds_per_level": args.seconds,
        "parameters": {"levels": args.levels, "seconds": args.seconds, "torch_threads": 1,
                       "max_batch_size": args.max_batch_size, "max_queue_delay_ms": args.max_queue_delay_ms},
        "levels": levels, "idle_runs": idle_runs, "idle_summary": idle_summary, "targets": targets,
        "partitions": batching,
    })  # fmt: skip
    # The full run's plot goes with docs/benchmarks.md; a quick run's stays beside its (git-ignored) JSON.
    _plot(
        levels,
        args.out.with_suffix(".png")
        if args.quick
        else Path(__file__).resolve().parents[1] / "docs" / "img" / "load.png",
    )
    return 0


def _pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's runs (rounds) as one: requests and seconds summed, quantiles over all samples."""
    if len(runs) == 1:
        return runs[0]
    latencies = sorted(v for r in runs for v in r["latencies_ms"])
    seconds = sum(r["seconds"] for r in runs)
    peaks = {k: max(r["peak_rss_bytes"][k] for r in runs) for k in runs[0]["peak_rss_bytes"]}
    return {
        **runs[0], "rounds": len(runs), "seconds": seconds, "requests": len(latencies),
        "errors": sum(r["errors"] for r in runs), "throughput_rps": len(latencies) / seconds,
        "throughput_rps_per_round": [r["throughput_rps"] for r in runs],
        "p50_ms": _quantile(latencies, 0.5), "p95_ms": _quantile(latencies, 0.95), "p99_ms": _quantile(latencies, 0.99),
        "mean_ms": statistics.fmean(latencies) if latencies else 0.0, "peak_rss_bytes": peaks,
        "latencies_ms": latencies,
    }  # fmt: skip


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _plot(levels: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    devices = [level["devices"] for level in levels]
    left.plot(devices, [level["throughput_rps"] for level in levels], marker="o")
    left.set(xlabel="concurrent devices", ylabel="requests/s", title="throughput", xscale="log")
    right.plot(devices, [level["p50_ms"] for level in levels], marker="o", label="p50")
    right.plot(devices, [level["p99_ms"] for level in levels], marker="s", label="p99")
    right.set(xlabel="concurrent devices", ylabel="latency (ms)", title="latency", xscale="log")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
