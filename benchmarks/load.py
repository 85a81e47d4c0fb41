"""Load and concurrency benchmark: N devices for T seconds against a real cluster on loopback.

etcd, two server nodes (each hosting every partition of a ResNet-style CNN) and the front-end run as their
own processes. For each concurrency level (devices = client threads, each sending requests back to back as a
thin client that runs nothing itself), the run reports requests/s, errors, p50/p99 latency and the peak
resident memory of every component (sampled every 100 ms). It stops by itself after each level's duration.

Targets: throughput does not fall as concurrency rises (within 10% run-to-run noise), and every
component's peak memory stays under 1 GiB.

Each level also records what decided it: the plans the devices got (``plans``: each distinct placement,
partition@server, and how many devices have it), the steps each node ran per partition
(``steps_per_node``: a request split over the nodes shows as unequal counts), each device's Plan call
(``plan_call_ms``), and the cores busy on the whole machine while it ran (``cores_busy``: ours, the
benchmark's processes, and others', anything else on a shared box; ``contended_levels`` names the levels
where others used more than 0.1 core in some round: their throughput is not comparable). What these showed
on 16 vs 64 devices, and was fixed in the planner: a plan listed as replicas only the servers about as fast
*including the queue they reported at planning time*, so every device that planned while one node was busier
sent all its requests to the other for the plan's whole life (one round ran 64 devices on one node, the
other idle), and a server's calibrated contention on one partition made 3 of 16 plans send every request
from one node to the other for the last partition (a hop and a second request path for nothing). Replicas
are now judged without the queue and over all a server's partitions together (every request runs whole on
the replica it enters; both nodes took half the requests in every round since), and the front-end stores
results by group commit. On a quiet machine (others < 0.05 core), 2 rounds of 8 s: 16 devices 456 req/s,
64 devices 464 req/s, CPU per request (all components) 4.16 and 4.11 ms; with another user taking 0.5
core, both levels drop to 330-360 req/s.

Dynamic batching (the ``batching`` section): ``--batch-devices`` devices in alternating blocks with the nodes
unbatched and batching (unbatched, batched, batched, unbatched, ...; the nodes restart between blocks with
the block's config; by default the first half of each model's partitions on one node and the second half on
the other), on two models: the ResNet-style CNN above, and an MLP of four 4096-wide linear layers, by
default as ONE partition on node 0 (``--batch-mlp-stages 1``: every device's requests queue at one
batcher; split in two, each stage's queue holds only 3-4 requests and batches stay small). At batch 1 a
linear layer is a matrix-vector product bound by reading its weights (64 MiB each): in ORT with one thread
the whole MLP takes 18.8 ms at batch 1 and 29.9 ms at batch 16 (1.9 ms a row). The CNN's convolutions are
already compute-bound at batch 1 and its whole compute is a small part of a request's path, so batching
gains it little. Both modes run the same placement, node count and threads (``--batch-intra-op-threads``,
default 1: with 2, the unbatched node's two compute threads oversubscribe the 2 cores and its baseline
drops from 84 to 56 req/s). Reported per model and mode: requests/s, p50/p99, the mean requests per
batched run from node statistics, the ratio pooled and per round (adjacent blocks), and CPU ms per request
of each component (the client = this process, the front-end, the nodes). Target: batched throughput >= 2.5x
unbatched at 16 devices. A request's path costs CPU beside the partition whatever the batch, so the
ratio is bounded by (compute at batch 1 + path) / (compute per batched row + path). Cut this session
(devices send InferOnce, one message each way instead of an Infer stream; the front-end runs requests on
its event loop and calls the nodes through grpc.aio instead of a worker thread with a synchronous gRPC
stack, reads the result store without a thread hop, and stores without counting the table per put):
client 1.0 -> 0.45 ms, front-end 2.3-2.7 -> 2.1 ms per request (residual_cnn at 16 devices). Full run
under the bench lock (8 s blocks, 2 rounds): mlp4096 81 -> 230 req/s, 2.84x (both rounds 2.84x), 7.6
requests per batch, p99 217 -> 130 ms; residual_cnn 0.97x (its compute is negligible: the nodes' 2.4-4.0 ms
of CPU per request, against well under 1 ms of compute, is their request path). Unbatched levels 1/4/16:
199/363/355 req/s (last session 175 at 1 device, 221-248 at 16).

    python benchmarks/load.py --out benchmarks/results/load.json [--levels 1 4 16] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
#: The batching comparison's weight-bound model (defined here, see :func:`_mlp`).
MLP = "mlp4096"
MEMORY_LIMIT_BYTES = 1 << 30
BATCHING_TARGET = 2.5


def _mlp() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Four Linear(4096, 4096) + ReLU: 64 MiB of fp32 weights per layer, GEMV-bound at batch 1."""
    torch.manual_seed(11)
    layers: list[torch.nn.Module] = []
    for _ in range(4):
        layers += [torch.nn.Linear(4096, 4096), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval(), (torch.randn(1, 4096),)


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

    def _cpu(self) -> dict[str, float]:
        out = {"client": time.process_time()}  # this process: the asyncio devices
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                out[name] = times.user + times.system
        return out

    @staticmethod
    def _busy_s() -> float:
        """CPU seconds the whole machine has been busy (every process, ours and anyone else's)."""
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def __enter__(self) -> Sampler:
        self._busy_start = self._busy_s()
        self._wall_start = time.monotonic()
        self._cpu_start = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        end = self._cpu()
        #: CPU seconds each component used while the level ran (the client: this process).
        self.cpu_s = {k: end[k] - v for k, v in self._cpu_start.items() if k in end}
        wall = max(time.monotonic() - self._wall_start, 1e-9)
        busy = self._busy_s() - self._busy_start
        #: Cores in use on average while the level ran: by the benchmark's processes, and by anything else
        #: on the machine (other users of a shared box; a level with others busy is not comparable).
        self.cores = {
            "ours": sum(self.cpu_s.values()) / wall,
            "others": max(0.0, busy - sum(self.cpu_s.values())) / wall,
        }


def _device(index: int) -> plan_pb2.DeviceState:
    return plan_pb2.DeviceState(device_id=f"load-{index}", compute_flops=0, uplink_mbps=1000, rtt_ms=0.2)


async def _device_loop(
    address: str, index: int, tensor: Any, until: float, out: dict[str, Any], model: str = MODEL,
    rpc: str = "once",
) -> None:  # fmt: skip
    """One device: its own connection, requests back to back until ``until`` (each an InferOnce call, or
    with ``rpc="stream"`` an Infer stream)."""
    device = _device(index)
    latencies, errors = [], 0
    async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
        stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
        asked = time.perf_counter()
        plan = (await stub.Plan(frontend_pb2.PlanRequest(model=model, device=device), timeout=30)).plan
        out[f"planms{index}"] = (time.perf_counter() - asked) * 1e3
        # Where the plan put each partition (the device's share names the chosen server per partition).
        out[f"plan{index}"] = " ".join(
            f"{p.partition.partition}@{'device' if p.on_device else p.address}" for p in plan.placements
        )
        while time.monotonic() < until:
            header = frontend_pb2.InferHeader(
                request_id=uuid.uuid4().hex, device=device, plan_id=plan.plan_id, timeout_ms=30_000
            )
            start = time.perf_counter()
            try:
                got = 0
                if rpc == "once":
                    once = frontend_pb2.InferOnceRequest(header=header, tensors=[tensor])
                    got = len((await stub.InferOnce(once, timeout=30)).tensors)
                else:
                    messages = [frontend_pb2.InferRequest(header=header), frontend_pb2.InferRequest(tensor=tensor)]
                    assembler = TensorAssembler()
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
    idle_targets: tuple[str, ...] = (), model: str = MODEL, rpc: str = "once",
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
    await asyncio.gather(*(_device_loop(address, k, tensor, until, out, model, rpc) for k in range(devices)))
    out["_elapsed_s"] = time.perf_counter() - start
    for task in idlers:
        task.cancel()
    await asyncio.gather(*idlers, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return closed[0]


def run_level(address: str, devices: int, seconds: float, x: torch.Tensor, input_name: str,
              processes: dict[str, int], idle: int = 0,
              idle_targets: tuple[str, ...] = (), model: str = MODEL, rpc: str = "once",
              nodes: list[NodeProcess] | None = None) -> dict[str, Any]:  # fmt: skip
    """``devices`` concurrent devices, driven by one asyncio loop (threads would add GIL contention on
    the load generator's side of a small machine), beside ``idle`` streams that hold the nodes open. With
    ``nodes``, also how many steps of each partition each node ran during the level."""
    results: dict[str, Any] = {}
    tensor = encode_tensor(x, input_name)
    before = _partition_stats(nodes) if nodes else []
    refused_before = _refused(nodes) if nodes else {}
    with Sampler(processes) as sampler:
        closed = asyncio.run(_devices(address, devices, seconds, tensor, results, idle, idle_targets, model, rpc))
        elapsed = results.pop("_elapsed_s")  # the devices' own time, not the idle streams' set-up
    steps_per_node: dict[str, dict[str, int]] = {}
    refusals: dict[str, int] = {}
    if nodes:
        refusals = {k: v - refused_before.get(k, 0) for k, v in _refused(nodes).items()}
        done = {(r["node"], r["partition"]): r["completed"] for r in before}
        names = {n.address: f"node{k}" for k, n in enumerate(nodes)}
        for row in _partition_stats(nodes):
            ran = row["completed"] - done.get((row["node"], row["partition"]), 0)
            steps_per_node.setdefault(names.get(row["node"], row["node"]), {})[row["partition"]] = ran
    plan_ms = sorted(results.pop(k) for k in [k for k in results if k.startswith("planms")])
    placements = [results.pop(k) for k in [k for k in results if k.startswith("plan")]]
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
        # CPU each component spent per request served (the whole level's CPU time over its requests).
        "cpu_ms_per_request": {k: v * 1e3 / max(len(latencies), 1) for k, v in sampler.cpu_s.items()},
        "cores_busy": sampler.cores,
        # The plans the devices got: each distinct placement (partition@server ...) and how many devices.
        "plans": dict(collections.Counter(placements).most_common()),
        # Each device's Plan call (before its first request), median and slowest, ms.
        "plan_call_ms": {"median": statistics.median(plan_ms) if plan_ms else 0.0, "max": max(plan_ms, default=0.0)},
        # Steps each node ran per partition (a request split over the nodes shows as unequal counts).
        "steps_per_node": steps_per_node,
        # Calls each node refused during the level (a cap reached: requests in flight, streams, memory); the
        # front-end retries them on another replica, so they cost time without showing as errors.
        "node_refusals": refusals,
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
    parser.add_argument(
        "--batch-devices", type=int, default=16,
        help="devices of the batching comparison (unbatched vs batched blocks, both models); 0 skips it",
    )  # fmt: skip
    parser.add_argument("--batch-rounds", type=int, default=2, help="unbatched+batched block pairs per model (ABBA)")
    parser.add_argument("--batch-seconds", type=float, default=10.0)
    parser.add_argument("--batch-max-size", type=int, default=16, help="max_batch_size of the batched blocks")
    parser.add_argument(
        "--batch-placement", choices=["pipeline", "replicated"], default="pipeline",
        help="batching blocks: first half of the partitions on node 0, second on node 1 (pipeline), or all on both",
    )  # fmt: skip
    parser.add_argument("--batch-models", nargs="+", default=[MODEL, MLP], choices=[MODEL, MLP])
    parser.add_argument(
        "--batch-mlp-stages", type=int, choices=[1, 2], default=1,
        help="the MLP as one partition on node 0 (1: one batcher sees every device's requests) or split in two",
    )  # fmt: skip
    parser.add_argument(
        "--batch-intra-op-threads", type=int, default=1,
        help="onnxruntime intra-op threads per run on the nodes, in both modes of the batching comparison",
    )  # fmt: skip
    parser.add_argument(
        "--rpc", choices=["once", "stream"], default="once",
        help="each device's requests: InferOnce calls (one message each way) or Infer streams",
    )  # fmt: skip
    parser.add_argument(
        "--plot", type=Path, default=None,
        help="where the levels' plot goes (default: docs/img/load.png for a full run, beside --out for --quick)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.seconds, args.idle_streams, args.idle_devices, args.rounds = [1, 4], 2.0, 50, 4, 1
        args.batch_devices, args.batch_rounds, args.batch_seconds = 4, 1, 2.0
    console = Console(width=140)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="splitinfer-load-"))
    etcd = start_etcd(work / "etcd")
    nodes: list[NodeProcess] = []
    frontend = None
    idle_runs: list[dict[str, Any]] = []
    batching: list[dict[str, Any]] = []
    blocks: dict[str, list[dict[str, Any]]] = {}
    try:
        model, example = build(MODEL)
        program = export_program(model, example)
        graph = ModelGraph.build(program, example)
        cuts = [c.position for c in narrow_cuts(graph)][1:-1]
        pool = ModelPool(work / "pool")
        sha = pool.add_division(partition_at(graph, MODEL, cuts[:: max(1, len(cuts) // 2)]), variant="fp32",
                                division_name="default")  # fmt: skip
        models = {MODEL: (sha, example[0], program.input_names[0])}
        if args.batch_devices:
            mlp, mlp_example = _mlp()
            mlp_program = export_program(mlp, mlp_example)
            mlp_graph = ModelGraph.build(mlp_program, mlp_example)
            middle = [c.position for c in narrow_cuts(mlp_graph)][1:-1]
            mlp_cuts = [] if args.batch_mlp_stages == 1 else [middle[len(middle) // 2]]
            mlp_sha = pool.add_division(partition_at(mlp_graph, MLP, mlp_cuts), variant="fp32",
                                        division_name="default")  # fmt: skip
            models[MLP] = (mlp_sha, mlp_example[0], mlp_program.input_names[0])
        nodes.extend(_start_nodes(work, etcd.endpoint, pool, {MODEL: sha}, args.max_batch_size,
                                  args.max_queue_delay_ms))  # fmt: skip
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
        run_level(address, 1, 1.0, example[0], program.input_names[0], processes, rpc=args.rpc)  # warm-up
        # Levels in alternating order over the rounds (1 4 16 64, then 64 16 4 1, ...), pooled per level, so
        # that drift of a shared machine does not masquerade as a trend with concurrency.
        runs: dict[int, list[dict[str, Any]]] = {d: [] for d in args.levels}
        for round_index in range(args.rounds):
            order = args.levels if round_index % 2 == 0 else list(reversed(args.levels))
            for d in order:
                runs[d].append(run_level(address, d, args.seconds, example[0], program.input_names[0], processes,
                                         rpc=args.rpc, nodes=nodes))  # fmt: skip
        levels = [_pooled(runs[d]) for d in args.levels]
        batching.extend(_partition_stats(nodes))  # what each node's partitions ran on, and their batches
        if args.idle_streams:
            # The same device count without and with the idle streams, alternated twice: the ratio of their
            # p99 is what the idle streams cost good requests.
            for idle in (0, args.idle_streams, 0, args.idle_streams):
                idle_runs.append(run_level(address, args.idle_devices, args.seconds, example[0],
                                           program.input_names[0], processes, idle,
                                           tuple(n.address for n in nodes), rpc=args.rpc))  # fmt: skip
        if args.batch_devices:
            for node in nodes:
                node.stop()
            nodes.clear()
            base = {"front-end": frontend.pid, "etcd": etcd.process.pid}
            for name in args.batch_models:
                model_sha, x, input_name = models[name]
                blocks[name] = _compare_batching(
                    address, name, model_sha, x, input_name, work, etcd.endpoint, pool, base, nodes, args
                )
    finally:
        if frontend is not None:
            frontend.terminate()
            frontend.wait(timeout=20)
        for node in nodes:
            node.stop()
        etcd.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"load: {MODEL} over 2 nodes, thin clients on loopback")
    for column in ("devices", "req/s", "req/s per round", "errors", "p50 ms", "p95 ms", "p99 ms",
                   "peak RSS (MiB) per component", "CPU ms/req: client, front-end, nodes",
                   "cores busy per round: ours/others"):  # fmt: skip
        table.add_column(column, justify="right")
    for level in levels:
        rss = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in level["peak_rss_bytes"].items())
        per_round = level.get("throughput_rps_per_round", [level["throughput_rps"]])
        cores = level.get("cores_busy_per_round", [level["cores_busy"]])
        table.add_row(str(level["devices"]), f"{level['throughput_rps']:.1f}", " ".join(f"{v:.0f}" for v in per_round),
                      str(level["errors"]), f"{level['p50_ms']:.1f}", f"{level['p95_ms']:.1f}",
                      f"{level['p99_ms']:.1f}", rss, _cpu_text(level["cpu_ms_per_request"]),
                      " ".join(f"{c['ours']:.2f}/{c['others']:.2f}" for c in cores))  # fmt: skip
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
    contended = [
        level["devices"]
        for level in levels
        if any(c.get("others", 0.0) > 0.1 for c in level.get("cores_busy_per_round", [level["cores_busy"]]))
    ]
    if contended:
        console.print(f"levels {contended}: other processes used over 0.1 core while they ran (not comparable)")
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
    batching_summary = [_batching_summary(name, runs) for name, runs in blocks.items()]
    if batching_summary:
        title = (
            f"dynamic batching: {args.batch_devices} devices, unbatched vs batched (max_batch_size "
            f"{args.batch_max_size}, delay {args.max_queue_delay_ms} ms), {args.batch_rounds * 2} alternating "
            f"blocks of {args.batch_seconds:.0f} s"
        )
        batch_table = Table(title=title)
        for column in ("model", "mode", "req/s", "req/s per block", "p50 ms", "p99 ms", "req per batch", "x unbatched",
                       "CPU ms/req: client, front-end, nodes"):  # fmt: skip
            batch_table.add_column(column, justify="right")
        for summary in batching_summary:
            for mode in ("unbatched", "batched"):
                m = summary[mode]
                batch_table.add_row(
                    summary["model"], mode, f"{m['throughput_rps']:.1f}",
                    " ".join(f"{v:.0f}" for v in m["throughput_rps_per_block"]), f"{m['p50_ms']:.1f}",
                    f"{m['p99_ms']:.1f}", f"{m['mean_requests_per_batch']:.2f}" if mode == "batched" else "",
                    f"{summary['ratio']:.2f} (median of rounds {summary['ratio_median_of_rounds']:.2f})"
                    if mode == "batched" else "", _cpu_text(m["cpu_ms_per_request"]),
                )  # fmt: skip
        console.print(batch_table)
        for summary in batching_summary:
            targets[f"batching_{summary['model']}_2.5x"] = summary["meets_target"]
            targets[f"batching_{summary['model']}_no_errors"] = not (
                summary["batched"]["errors"] or summary["unbatched"]["errors"]
            )
    console.print(f"targets: {targets}")
    write_json(args.out, {
        "benchmark": "load", "machine": machine_info(), "model": MODEL, "nodes": 2, "seconds_per_level": args.seconds,
        "parameters": {"levels": args.levels, "seconds": args.seconds, "torch_threads": 1, "rpc": args.rpc,
                       "max_batch_size": args.max_batch_size, "max_queue_delay_ms": args.max_queue_delay_ms},
        "levels": levels, "idle_runs": idle_runs, "idle_summary": idle_summary, "targets": targets,
        "contended_levels": contended,
        "partitions": batching,
        "batching": {"devices": args.batch_devices, "max_batch_size": args.batch_max_size,
                     "max_queue_delay_ms": args.max_queue_delay_ms, "rounds": args.batch_rounds,
                     "placement": args.batch_placement, "mlp_stages": args.batch_mlp_stages,
                     "intra_op_threads": args.batch_intra_op_threads,
                     "seconds_per_block": args.batch_seconds, "models": batching_summary,
                     "blocks": [{k: v for k, v in r.items() if k != "latencies_ms"} for rs in blocks.values()
                                for r in rs]},
    })  # fmt: skip
    # The full run's plot goes with docs/benchmarks.md; a quick run's stays beside its (git-ignored) JSON.
    default_plot = Path(__file__).resolve().parents[1] / "docs" / "img" / "load.png"
    _plot(levels, args.plot or (args.out.with_suffix(".png") if args.quick else default_plot))
    return 0


def _start_nodes(
    work: Path, etcd_endpoint: str, pool: ModelPool, divisions: dict[str, str], max_batch_size: int,
    max_queue_delay_ms: float, pipeline: bool = False, intra_op_threads: int = 1,
) -> list[NodeProcess]:  # fmt: skip
    """Two nodes, each hosting every partition of ``divisions`` (model -> division sha), registered; with
    ``pipeline``, the first half of each model's partitions on node 0 and the second half on node 1 (one
    replica each: one hop between the nodes, as a model split over two servers runs; a model of one
    partition then runs on node 0 alone)."""
    config = work / f"node-{uuid.uuid4().hex[:8]}.json"
    config.write_text(json.dumps({"max_batch_size": max_batch_size, "max_queue_delay_ms": max_queue_delay_ms,
                                  "intra_op_threads": intra_op_threads}))  # fmt: skip
    nodes = [
        spawn_node(
            ["--registry", f"etcd://{etcd_endpoint}", "--torch-threads", "1", "--config", str(config)], log_dir=work
        )
        for _ in range(2)
    ]
    keys = []
    for model, sha in divisions.items():
        for part in (p.name for p in pool.division(sha).partitions):
            target = work / "exports" / f"{model}-{part}-{uuid.uuid4().hex[:8]}"
            part_sha = pool.export_partition(sha, part, target)
            keys.append((model, part, str(target), part_sha))
    hosts: list[set[str]] = []
    per_model = {model: sum(1 for k in keys if k[0] == model) for model, _, _, _ in keys}
    position: dict[str, int] = {}
    for model, part, target, part_sha in keys:
        index = position[model] = position.get(model, -1) + 1
        # Pipeline: the first half of the model's partitions on node 0, the second half on node 1.
        chosen = [nodes[index * 2 // per_model[model]]] if pipeline else nodes
        for node in chosen:
            with NodeClient(node.address) as client:
                client.load_partition(target, PartitionKey(model, "fp32", part), part_sha)
        hosts.append({n.address for n in chosen})
    registry = EtcdRegistry(etcd_endpoint)
    try:
        while any(
            {r.address for r in registry.replicas(f"{model}@fp32/{part}")} != wanted
            for (model, part, _, _), wanted in zip(keys, hosts, strict=True)
        ):
            time.sleep(0.1)
    finally:
        registry.close()
    return nodes


def _refused(nodes: list[NodeProcess]) -> dict[str, int]:
    """Calls each node refused since it started (GetStatus ``refused``), by name (node0, node1, ...)."""
    out = {}
    for k, node in enumerate(nodes):
        with NodeClient(node.address) as client:
            out[f"node{k}"] = int(client.status().refused)
    return out


def _partition_stats(nodes: list[NodeProcess]) -> list[dict[str, Any]]:
    rows = []
    for node in nodes:
        with NodeClient(node.address) as client:
            rows.extend(
                {"node": node.address, "model": h.partition.model, "partition": h.partition.partition,
                 "runtime": h.runtime, "completed": h.completed, "batches": h.batches,
                 "batched_requests": h.batched_requests, "largest_batch_requests": h.largest_batch_requests}
                for h in client.status().partitions
            )  # fmt: skip
    return rows


def _compare_batching(
    address: str, model: str, sha: str, x: torch.Tensor, input_name: str, work: Path, etcd_endpoint: str,
    pool: ModelPool, base: dict[str, int], nodes: list[NodeProcess], args: argparse.Namespace,
) -> list[dict[str, Any]]:  # fmt: skip
    """Alternating unbatched / batched blocks (ABBA: U B B U ...) of ``args.batch_devices`` devices on
    ``model``; the nodes restart between blocks with the block's batching config. ``nodes`` holds the
    running ones (for the caller's cleanup)."""
    out = []
    for round_index in range(args.batch_rounds):
        modes = (False, True) if round_index % 2 == 0 else (True, False)
        for batched in modes:
            size = args.batch_max_size if batched else 1
            nodes.extend(_start_nodes(work, etcd_endpoint, pool, {model: sha}, size, args.max_queue_delay_ms,
                                      pipeline=args.batch_placement == "pipeline",
                                      intra_op_threads=args.batch_intra_op_threads))  # fmt: skip
            processes = {**base, **{f"node{k}": n.process.pid for k, n in enumerate(nodes)}}
            run_level(address, args.batch_devices, 1.0, x, input_name, processes, model=model, rpc=args.rpc)  # warm-up
            warm = _partition_stats(nodes)
            run = run_level(address, args.batch_devices, args.batch_seconds, x, input_name, processes, model=model,
                            rpc=args.rpc)  # fmt: skip
            after = _partition_stats(nodes)
            # Node counters are cumulative: the block's own batches are after minus warm-up.
            before = {(r["node"], r["partition"]): r for r in warm}
            for row in after:
                prior = before.get((row["node"], row["partition"]))
                if prior is not None:
                    for k in ("completed", "batches", "batched_requests"):
                        row[k] -= prior[k]
            run.update(model=model, batched=batched, max_batch_size=size, partitions=after)
            out.append(run)
            for node in nodes:
                node.stop()
            nodes.clear()
    return out


def _batching_summary(model: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The blocks of one model pooled per mode: req/s, p50/p99, and the batches the nodes ran."""
    summary: dict[str, Any] = {"model": model}
    for mode, batched in (("unbatched", False), ("batched", True)):
        mine = [r for r in runs if r["batched"] == batched]
        pooled = _pooled(mine)
        parts = [p for r in mine for p in r["partitions"]]
        served = sum(p["batched_requests"] for p in parts)
        batches = sum(p["batches"] for p in parts)
        summary[mode] = {
            "throughput_rps": pooled["throughput_rps"],
            "throughput_rps_per_block": [r["throughput_rps"] for r in mine],
            "p50_ms": pooled["p50_ms"], "p95_ms": pooled["p95_ms"], "p99_ms": pooled["p99_ms"],
            "requests": pooled["requests"], "errors": pooled["errors"],
            "batches": batches, "batched_requests": served,
            "mean_requests_per_batch": served / batches if batches else 0.0,
            "peak_rss_bytes": pooled["peak_rss_bytes"],
            # Per component, the median over the mode's blocks of CPU ms per request served.
            "cpu_ms_per_request": {k: statistics.median(r["cpu_ms_per_request"][k] for r in mine)
                                   for k in mine[0]["cpu_ms_per_request"]} if mine else {},
        }  # fmt: skip
    summary["ratio"] = summary["batched"]["throughput_rps"] / max(summary["unbatched"]["throughput_rps"], 1e-9)
    # Each round is one unbatched and one batched block next to each other: their ratio, round by round.
    unbatched = [r["throughput_rps"] for r in runs if not r["batched"]]
    batched = [r["throughput_rps"] for r in runs if r["batched"]]
    summary["ratio_per_round"] = [b / max(u, 1e-9) for u, b in zip(unbatched, batched, strict=False)]
    summary["ratio_median_of_rounds"] = statistics.median(summary["ratio_per_round"]) if batched else 0.0
    summary["meets_target"] = summary["ratio"] >= BATCHING_TARGET
    return summary


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
        "plans_per_round": [r.get("plans", {}) for r in runs],
        "cores_busy_per_round": [r.get("cores_busy", {}) for r in runs],
        "steps_per_node_per_round": [r.get("steps_per_node", {}) for r in runs],
        "node_refusals_per_round": [r.get("node_refusals", {}) for r in runs],
        "p50_ms": _quantile(latencies, 0.5), "p95_ms": _quantile(latencies, 0.95), "p99_ms": _quantile(latencies, 0.99),
        "mean_ms": statistics.fmean(latencies) if latencies else 0.0, "peak_rss_bytes": peaks,
        "cpu_ms_per_request": {k: sum(r["cpu_ms_per_request"][k] * r["requests"] for r in runs) / max(len(latencies), 1)
                               for k in runs[0]["cpu_ms_per_request"]},
        "latencies_ms": latencies,
    }  # fmt: skip


def _cpu_text(cpu: dict[str, float]) -> str:
    nodes = sum(v for k, v in cpu.items() if k.startswith("node"))
    return f"{cpu.get('client', 0.0):.2f}, {cpu.get('front-end', 0.0):.2f}, {nodes:.2f}" if cpu else ""


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
