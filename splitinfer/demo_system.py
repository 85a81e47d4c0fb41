"""``make demo``: the whole system on one machine, with devices whose battery drains and whose uplink steps
through the standard profiles.

In this process: an embedded registry, a local Model Pool, three server nodes of different (emulated)
capacities, a front-end with its Result Store, and two emulated devices (a phone and a Jetson) running the
edge agent. Two models: a small CNN trained here on scikit-learn's bundled 8x8 digits (real, measured
accuracy for every variant and lossy codec) and a ResNet-18-shaped model at 112x112 for realistic latency
(accuracy declared). For each phase it prints the plan each device got, latency, energy and accuracy; at
the end a summary, a plot of the latency breakdown per phase, and where the results database is.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from edge_agent.agent import AgentResult, EdgeAgent
from edge_agent.config import AgentConfig
from server_node.config import NodeConfig
from server_node.server import start_node
from splitinfer.codecs import decode_tensor, encode_tensor
from splitinfer.divider import Division, partition_at
from splitinfer.frontend.server import FrontEndConfig, start_frontend
from splitinfer.graph import ModelGraph, cut_points, narrow_cuts
from splitinfer.planner.profiles import DEFAULT_CODECS
from splitinfer.planner.tracking import PredictionTracker
from splitinfer.pool import ModelPool
from splitinfer.program import CompiledProgram, Program
from splitinfer.registry import EmbeddedRegistry
from splitinfer.runtime import PartitionKey
from splitinfer.runtime.compute import measure_flops
from splitinfer.testbed import Slowdown
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import plan_pb2
from splitinfer.variants import make_variant, measure_top1
from splitinfer.zoo import resnet18

__all__ = ["DigitsCNN", "run_system_demo"]

PHASES = (("Wi-Fi", 18.88, 95.0), ("4G", 5.85, 70.0), ("3G", 1.1, 40.0), ("CAT1", 0.13, 12.0))
DIGITS_VARIANTS = ("fp32", "fp16", "bf16", "int8")
RESNET_VARIANTS = {"fp32": 0.697, "int8": 0.687}  # ImageNet-like top-1 for the architecture: declared


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _digits(cache: Path, console: Console) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The trained digits CNN (trained once, in seconds, then cached) and the held-out evaluation set."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, held_out = order[:1437], order[1437:]
    model = DigitsCNN()
    weights = cache / "digits_cnn.safetensors"
    if weights.exists():
        model.load_state_dict(safetensors.torch.load_file(str(weights)))
    else:
        start = time.perf_counter()
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(15):
            for batch in train[torch.randperm(len(train))].split(64):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
                loss.backward()
                optimizer.step()
        cache.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(model.state_dict(), str(weights))
        console.print(f"trained the digits CNN in {time.perf_counter() - start:.1f} s (cached in {weights})")
    return model.eval(), images[held_out], labels[held_out]


def _divide(program: Program, example: tuple[torch.Tensor, ...], name: str, every: int = 1) -> Division:
    graph = ModelGraph.build(program, example)
    cuts = [c.position for c in narrow_cuts(graph)][1:-1]
    return partition_at(graph, name, cuts[::every])


def _codec_drops(program: Program, example: tuple[torch.Tensor, ...], images: torch.Tensor, labels: torch.Tensor,
                 base_accuracy: float) -> dict[str, float]:  # fmt: skip
    """Accuracy lost when the tensor at the network's narrowest cut crosses with each lossy codec (measured)."""
    graph = ModelGraph.build(program, example)
    interior = [c for c in cut_points(graph)[1:-1] if c.crossing and c.crossing[0].dtype.is_floating_point]
    cut = min(interior, key=lambda c: (c.crossing_bytes, c.position))
    inputs = program.input_names
    names = [s.name for s in cut.crossing]
    head = CompiledProgram(program.subprogram(inputs, names))
    tail = CompiledProgram(program.subprogram(names, program.output_names))
    drops = {}
    for profile in DEFAULT_CODECS:
        if not profile.codec.is_lossy:
            continue
        correct = 0
        for x, y in zip(images, labels, strict=True):
            middle = head({inputs[0]: x.unsqueeze(0)})
            crossed = {n: decode_tensor(encode_tensor(middle[n], n, profile.codec)) for n in names}
            correct += int(tail(crossed)[program.output_names[0]].argmax() == y)
        drops[str(profile.codec)] = max(0.0, base_accuracy - correct / len(labels))
    return drops


@dataclass
class _Device:
    name: str
    agent: EdgeAgent


def run_system_demo(work: Path, console: Console | None = None) -> bool:
    console = console or Console(width=140)
    torch.set_num_threads(1)
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    pool = ModelPool(work / "pool")
    registry = EmbeddedRegistry()

    # Models, variants, measured accuracy, divisions into the pool.
    digits, images, labels = _digits(work / "cache", console)
    example = (images[:1],)
    accuracy_table = Table(title="digits CNN: measured accuracy on 360 held-out digits")
    for column in ("variant", "accuracy", "int8+zstd at the cut", "fp16+lz4 at the cut"):
        accuracy_table.add_column(column, justify="right")
    codec_drops: dict[str, dict[str, float]] = {}
    fp32_accuracy = 0.0
    for kind in DIGITS_VARIANTS:
        program = make_variant(digits, example, kind)
        accuracy = measure_top1(program, (images,), labels, source="360 held-out scikit-learn digits")
        fp32_accuracy = fp32_accuracy or accuracy.value
        drops = _codec_drops(program, example, images, labels, accuracy.value)
        for codec, drop in drops.items():
            codec_drops.setdefault(codec, {})[kind] = drop
        accuracy_table.add_row(kind, f"{accuracy.value:.3f}", f"-{drops['int8+zstd']:.3f}", f"-{drops['fp16+lz4']:.3f}")
        pool.add_division(
            _divide(program, example, "digits"), variant=kind, division_name="default", task="digits",
            accuracy=accuracy.value, accuracy_measured=True,
        )  # fmt: skip
    console.print(accuracy_table)
    codecs = tuple(
        replace(c, accuracy_drop=codec_drops.get(str(c.codec), {}), source="accuracy drop measured on digits")
        if c.codec.is_lossy
        else c
        for c in DEFAULT_CODECS
    )
    resnet, resnet_example = resnet18(112)
    for kind, accuracy_value in RESNET_VARIANTS.items():
        program = make_variant(resnet, resnet_example, kind)
        pool.add_division(
            _divide(program, resnet_example, "resnet18", every=3), variant=kind, division_name="default",
            task="imagenet-like", accuracy=accuracy_value, accuracy_measured=False,
        )  # fmt: skip
    console.print(f"divided digits ({len(DIGITS_VARIANTS)} variants) and resnet18@112 (fp32, int8) into {pool.root}")
    from splitinfer.detection.demo import detection_phase, prepare_detector

    _, detection_frames = prepare_detector(pool, work / "cache", console)
    detected = False

    # Three server nodes of different capacities (emulated by the testbed's compute hook), all hosting every
    # partition, in the embedded registry.
    nodes = [
        start_node(
            NodeConfig(torch_threads=1, benchmark_s=0.1, status_interval_s=0.5),
            registry=registry,
            compute_hook=Slowdown(factor),
        )
        for factor in (4.0, 2.0, 1.0)
    ]
    names = {nodes[0].address: "edge-small", nodes[1].address: "edge-large", nodes[2].address: "cloud"}
    exports = work / "exports"
    for entry in pool.variants():
        manifest_sha = entry.divisions["default"]
        for part in pool.manifest(manifest_sha)["partitions"]:
            target = exports / f"{entry.model}@{entry.variant}" / part["name"]
            sha = pool.export_partition(manifest_sha, part["name"], target)
            for node in nodes:
                with NodeClient(node.address) as client:
                    client.load_partition(str(target), PartitionKey(entry.model, entry.variant, part["name"]), sha)
    for node in nodes:
        node.publish()
    console.print("server nodes: " + ", ".join(f"{names[n.address]} at {n.address} "
                                               f"({n.compute_flops / 1e9:.1f} GFLOP/s)" for n in nodes))  # fmt: skip
    frontend = start_frontend(
        FrontEndConfig(pool_dir=str(pool.root), results_db=str(work / "results.db")), registry=registry, codecs=codecs
    )
    flops = measure_flops(0.2)
    devices = [
        _Device("phone", EdgeAgent(AgentConfig(
            device_id="phone-1", device_class="phone", frontend=frontend.address, pool=frontend.address,
            cache_dir=str(work / "phone"), compute_slowdown=20.0, emulated_battery=True, battery_capacity_wh=0.2,
            emulated_uplink_mbps=18.88, plan_ttl_s=5.0, compute_power_w=3.0, transmit_power_w=1.2,
        ), compute_flops=flops / 20)),
        _Device("jetson", EdgeAgent(AgentConfig(
            device_id="jetson-1", device_class="jetson", frontend=frontend.address, pool=frontend.address,
            cache_dir=str(work / "jetson"), compute_slowdown=3.0, emulated_battery=True, charging=True,
            emulated_uplink_mbps=18.88, plan_ttl_s=5.0, compute_power_w=10.0, transmit_power_w=2.0,
        ), compute_flops=flops / 3)),
    ]  # fmt: skip
    digits_input = make_variant(digits, example, "fp32").input_names[0]
    resnet_input = make_variant(resnet, resnet_example, "fp32").input_names[0]
    rng = random.Random(0)
    for device in devices:  # warm-up: first plans, partition pulls, connections (not counted)
        device.agent.infer("digits", {digits_input: images[:1]})
        device.agent.infer("resnet18", {resnet_input: resnet_example[0]})
    digits_req = plan_pb2.Requirements(max_latency_ms=500, min_accuracy=round(fp32_accuracy - 0.02, 3))
    resnet_req = plan_pb2.Requirements(max_latency_ms=3000)
    rows: list[dict[str, Any]] = []
    tracker = PredictionTracker()
    try:
        for phase, mbps, battery in PHASES:
            console.rule(f"[bold]phase {phase}: uplink {mbps} Mbps, phone battery {battery:.0f}%")
            for device in devices:
                device.agent.network.emulated_uplink_mbps = mbps
                if device.name == "phone":
                    device.agent.battery.set(percent=battery, charging=False)
                results: dict[str, list[AgentResult]] = {"digits": [], "resnet18": []}
                correct = 0
                for _ in range(6):
                    k = rng.randrange(len(labels))
                    result = device.agent.infer("digits", {digits_input: images[k : k + 1]}, digits_req)
                    correct += int(next(iter(result.outputs.values())).argmax() == labels[k])
                    results["digits"].append(result)
                    _show_prediction(console, tracker, phase, device.name, "digits", result)
                for _ in range(2):
                    x = torch.randn(resnet_example[0].shape)
                    results["resnet18"].append(device.agent.infer("resnet18", {resnet_input: x}, resnet_req))
                    _show_prediction(console, tracker, phase, device.name, "resnet18", results["resnet18"][-1])
                for model, done in results.items():
                    summary = done[-1].plan_summary
                    for address, label in names.items():
                        summary = summary.replace(address, label)
                    row = {
                        "phase": phase, "device": device.name, "model": model,
                        "latency_ms": statistics.fmean(r.total_ms for r in done),
                        "device_ms": statistics.fmean(r.device_ms for r in done),
                        "remote_ms": statistics.fmean(r.remote_ms for r in done),
                        "energy_mj": statistics.fmean(r.energy_j for r in done) * 1e3,
                        "accuracy": correct / 6 if model == "digits" else None,
                        "fallbacks": sum(r.device_only_fallback for r in done),
                    }  # fmt: skip
                    rows.append(row)
                    note = f", {row['accuracy']:.0%} correct" if row["accuracy"] is not None else ""
                    console.print(
                        f"  {device.name:<6} {model:<8} {row['latency_ms']:7.1f} ms ({row['device_ms']:.1f} device + "
                        f"{row['remote_ms']:.1f} remote), {row['energy_mj']:.1f} mJ{note}\n      plan: {summary}",
                        markup=False,  # plans print partitions in [brackets]
                    )
            console.print(f"  phone battery now {devices[0].agent.battery.read().percent:.1f}%")
        devices[0].agent.network.emulated_uplink_mbps = PHASES[0][1]
        detected = detection_phase(devices[0].agent, frontend.address, detection_frames, work, console)
    finally:
        for device in devices:
            device.agent.close()
        frontend.stop(1)
        for node in nodes:
            node.stop(1)
    console.print(_prediction_table(tracker))
    console.print(_learned_table())
    table = Table(title="summary")
    for column in ("phase", "device", "model", "latency ms", "device ms", "remote ms", "energy mJ", "accuracy"):
        table.add_column(column, justify="right")
    for r in rows:
        shown = "-" if r["accuracy"] is None else f"{r['accuracy']:.0%}"
        table.add_row(r["phase"], r["device"], r["model"], f"{r['latency_ms']:.1f}", f"{r['device_ms']:.1f}",
                      f"{r['remote_ms']:.1f}", f"{r['energy_mj']:.1f}", shown)  # fmt: skip
    console.print(table)
    plot = _plot(rows, work / "demo-phases.png")
    store_path = work / "results.db"
    from splitinfer.results import ResultStore

    stored = ResultStore(store_path).count()
    console.print(f"plot: {plot}")
    console.print(f"results database: {store_path} ({stored} results stored; query them through ResultStoreService)")
    from splitinfer.demo_redivision import redivision_phase

    redivided = redivision_phase(work / "redivision", console)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return stored > 0 and detected and redivided and all(r["latency_ms"] > 0 for r in rows)


def _show_prediction(
    console: Console, tracker: PredictionTracker, phase: str, device: str, model: str, result: AgentResult
) -> None:
    """One line per request: the plan's predicted latency next to the measured one."""
    predicted = result.plan.predicted_latency_ms if result.plan is not None else float("nan")
    n = tracker.request_index(phase, device, model) + 1
    error = tracker.record(phase, device, model, predicted, result.inference_ms)
    cold = f" (+{result.cold_ms:.1f} ms cold: plan, pulls)" if result.cold_ms >= 0.05 else ""
    console.print(
        f"    {device:<6} {model:<8} #{n}: predicted {predicted:8.1f} ms, measured {result.inference_ms:8.1f} ms, "
        f"error {error:6.1%}{cold}",
        markup=False,
    )


def _learned_table() -> Table:
    """The learned planner (the committed policy, trained on the simulator) next to the exact planner, in the
    simulator's ResNet-18 phone world with fluctuating uplinks: the third planning approach, shown."""
    from splitinfer.sim.scenarios import compare_learned

    table = Table(title="learned planner vs exact planner, simulated ResNet-18 phones, 60 requests per profile")
    for column in ("profile", "planner", "SLO violations", "mean ms", "p95 ms", "energy mJ", "decision p50 ms"):
        table.add_column(column, justify="right")
    for m in compare_learned(60):
        table.add_row(m.scenario, m.planner, f"{m.slo_violation_rate:.1%}", f"{m.mean_latency_ms:.1f}",
                      f"{m.p95_latency_ms:.1f}", f"{m.mean_energy_mj:.1f}", f"{m.p50_plan_ms:.3f}")  # fmt: skip
    return table


def _prediction_table(tracker: PredictionTracker) -> Table:
    """Per phase: median |predicted - measured| / measured from the third request of each condition on, and
    on first requests of models that ran on that device before."""
    table = Table(title="prediction error per phase (|predicted - measured| / measured)")
    for column in ("phase", "requests", "median from 3rd request (<= 15%)", "first, model seen (<= 50%)", "worst"):
        table.add_column(column, justify="right")
    verdict = {True: "met", False: "NOT met", None: "-"}
    for s in tracker.summary():
        settled = "-" if s.settled_median is None else f"{s.settled_median:.1%} {verdict[s.settled_met]}"
        first = "-" if s.first_median is None else f"{s.first_median:.1%} {verdict[s.first_met]}"
        table.add_row(s.phase, str(s.requests), settled, first, f"{s.worst:.1%}")
    return table


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, model in zip(axes, ("digits", "resnet18"), strict=True):
        labels, device_ms, remote_ms = [], [], []
        for r in rows:
            if r["model"] == model:
                labels.append(f"{r['phase']}\n{r['device']}")
                device_ms.append(r["device_ms"])
                remote_ms.append(r["remote_ms"])
        xs = range(len(labels))
        ax.bar(xs, device_ms, label="on the device")
        ax.bar(xs, remote_ms, bottom=device_ms, label="servers and network")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylabel("ms per request")
        ax.set_title(f"{model}: where the time went")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
