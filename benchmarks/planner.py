"""Planner benchmark: solve time vs graph size and servers, optimality gaps, and the simulator comparison.

1. Solve time (p50/p95, cold and from the plan cache) for a ResNet-50-shaped model divided into 5-40
   partitions (at its narrow cuts), 1-8 servers, 3 variants (fp32, fp16, int8) and 4 codecs, over random
   device conditions: the planner's default solver (exact; the chain solver, since divisions at narrow cuts
   are chains) and CP-SAT on the same problems.
2. Optimality gap of greedy, Neurosurgeon and DADS against the exhaustive optimum on random small instances
   (CP-SAT must be 0).
3. The simulator over the four standard uplink profiles (CAT1 0.13, 3G 1.1, 4G 5.85, Wi-Fi 18.88 Mbps):
   the planner (default solver, with its plan cache), greedy, Neurosurgeon and DADS on a ResNet-18-shaped
   model; SLO violation rate, mean and p95 latency, device energy, accuracy. Writes a PNG plot.

    python benchmarks/planner.py --out benchmarks/results/planner.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_json

from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.planner import (
    AutoSolver,
    CpSatSolver,
    DadsSolver,
    DagSolver,
    DeviceProfile,
    ExhaustiveSolver,
    GreedySolver,
    NeurosurgeonSolver,
    PlanningProblem,
    Requirements,
    ServerProfile,
    VariantProfile,
)
from splitinfer.planner.build import variant_from_division
from splitinfer.planner.cost import evaluate
from splitinfer.planner.plan import assignment_of
from splitinfer.planner.planner import Planner
from splitinfer.planner.profiles import DEFAULT_CODECS, random_problem
from splitinfer.program import export_program
from splitinfer.sim import STANDARD_UPLINKS_MBPS, DeviceClassSpec, Scenario, bandwidth_trace, simulate
from splitinfer.zoo import build, resnet18

TARGET_COLD_MS = 50.0
TARGET_COLD_P95_MS = 150.0
TARGET_CACHED_US = 100.0


def three_variants(base: VariantProfile) -> tuple[VariantProfile, ...]:
    """fp32 as divided; fp16 with half the parameter and inner-tensor bytes; int8 (weight-only) with a quarter of
    the parameter bytes. Accuracies are declared (ImageNet-like top-1 for a ResNet), not measured."""
    n = len(base.partitions)
    fp16 = replace(
        base,
        variant="fp16",
        accuracy=base.accuracy - 0.001,
        partitions=tuple(replace(p, param_bytes=p.param_bytes // 2) for p in base.partitions),
        edges=tuple(replace(e, nbytes=e.nbytes // 2) if e.src >= 0 and e.dst < n else e for e in base.edges),
    )
    int8 = replace(
        base,
        variant="int8",
        accuracy=base.accuracy - 0.01,
        partitions=tuple(replace(p, param_bytes=p.param_bytes // 4) for p in base.partitions),
    )
    return base, fp16, int8


def divided(name: str, model: torch.nn.Module, example: tuple, partitions: int, accuracy: float) -> VariantProfile:  # type: ignore[type-arg]
    graph = ModelGraph.build(export_program(model, example), example)
    cuts = [c.position for c in narrow_cuts(graph)][1:-1]
    step = max(1, len(cuts) // max(1, partitions - 1))
    chosen = cuts[::step][: partitions - 1]
    return variant_from_division(partition_at(graph, name, chosen), "fp32", accuracy)


def divided_dag(name: str, model: torch.nn.Module, example: tuple, partitions: int, accuracy: float) -> VariantProfile:  # type: ignore[type-arg]
    """Cut at evenly spaced positions of the topological order, narrow or not: residual blocks are split
    inside, so skip connections cross partitions (a DAG with up to two tensors on a cut)."""
    graph = ModelGraph.build(export_program(model, example), example)
    n = len(graph.nodes)
    return variant_from_division(
        partition_at(graph, name, [round(k * n / partitions) for k in range(1, partitions)]), "fp32", accuracy
    )


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def solve_times(
    sizes: list[int],
    servers: list[int],
    trials: int,
    *,
    shape: str = "chain",
    hosting: bool = False,
    cpsat: bool = True,
) -> list[dict[str, Any]]:
    """Cold solve time of the planner's default (AutoSolver: the chain solver for chains, the DAG solver
    otherwise) and of CP-SAT on the same problems, and the time of a plan-cache hit. ``shape`` "chain":
    ResNet-50 cut at its narrow cuts; "dag": cut anywhere (skip edges cross partitions). ``hosting``: each
    server hosts a random 70% of the partitions (no server dominates another: the hard case)."""
    model, example = build("resnet50")
    rows = []
    for n in sizes:
        cut = divided if shape == "chain" else divided_dag
        variants = three_variants(cut("resnet50", model, example, n, 0.76))
        for count in servers:
            cold: dict[str, list[float]] = {"auto": [], "cp-sat": []}
            cached = []
            agree = 0
            for seed in range(trials):
                rng = random.Random(seed)
                server_profiles = tuple(
                    ServerProfile(
                        f"10.0.0.{i}:7000",
                        rng.uniform(2e10, 1e11),
                        rng.uniform(0, 5),
                        frozenset(f"resnet50@{v.variant}/{p.name}" for v in variants for p in v.partitions
                                  if rng.random() < 0.7) if hosting else None,
                    )
                    for i in range(count)
                )  # fmt: skip
                device = DeviceProfile(
                    flops=rng.uniform(5e9, 5e10),
                    uplink_mbps=rng.choice(list(STANDARD_UPLINKS_MBPS.values())),
                    downlink_mbps=20,
                    battery_percent=rng.uniform(10, 100),
                    charging=False,
                )
                budget = rng.choice([1.0, 100.0, 500.0])  # 1 ms: nothing meets it (the overflow case)
                problem = PlanningProblem(
                    variants, device, server_profiles, DEFAULT_CODECS, Requirements(max_latency_ms=budget)
                )
                plans = {}
                for name, solver in (("auto", AutoSolver()), ("cp-sat", CpSatSolver())):
                    if name == "cp-sat" and not cpsat:
                        continue
                    planner = Planner(solver)
                    start = time.perf_counter()
                    plans[name] = planner.plan(problem)
                    cold[name].append((time.perf_counter() - start) * 1e3)
                    if name == "auto":
                        for _ in range(20):
                            start = time.perf_counter()
                            planner.plan(problem)
                            cached.append((time.perf_counter() - start) * 1e6)
                if "cp-sat" in plans:
                    a, b = (evaluate(problem, assignment_of(problem, plans[k])) for k in ("auto", "cp-sat"))
                    agree += abs(a.violation - b.violation) <= 1e-9 and abs(a.objective - b.objective) <= 1e-5
            rows.append(
                {
                    "shape": shape,
                    "hosting": "70% each" if hosting else "all",
                    "partitions": len(variants[0].partitions),
                    "skip_edges": sum(1 for e in variants[0].edges if e.src >= 0 and e.dst > e.src + 1),
                    "servers": count,
                    "variants": 3,
                    "codecs": len(DEFAULT_CODECS),
                    "cold_ms": cold["auto"],
                    "cpsat_cold_ms": cold["cp-sat"],
                    "cached_us": cached,
                    "cold_p50_ms": statistics.median(cold["auto"]),
                    "cold_p95_ms": _pct(cold["auto"], 0.95),
                    "cpsat_p50_ms": statistics.median(cold["cp-sat"]) if cold["cp-sat"] else None,
                    "cpsat_p95_ms": _pct(cold["cp-sat"], 0.95) if cold["cp-sat"] else None,
                    "cpsat_agrees": f"{agree}/{trials}" if cpsat else None,
                    "cached_p50_us": statistics.median(cached),
                }
            )
    return rows


def gaps(instances: int) -> dict[str, Any]:
    """Every solver against the exhaustive optimum on small random instances of every shape (chains, wide
    cuts, several outputs, DAGs), in the lexicographic order: violation first, then the objective."""
    solvers = {
        "auto": AutoSolver(),
        "dag-dp": DagSolver(),
        "cp-sat": CpSatSolver(),
        "greedy": GreedySolver(),
        "neurosurgeon": NeurosurgeonSolver(),
        "dads": DadsSolver(),
    }
    result: dict[str, list[float]] = {name: [] for name in solvers}
    shapes = [{}, {"wide": 0.5}, {"outputs": 2, "wide": 0.3}, {"dag": True}, {"dag": True, "wide": 0.3, "outputs": 2}]
    for seed in range(instances):
        shape = shapes[seed % len(shapes)]
        problem = random_problem(seed, partitions=3, servers=2, variants=1 + seed % 2, codecs=3, **shape)  # type: ignore[arg-type]
        best = evaluate(problem, assignment_of(problem, ExhaustiveSolver().solve(problem)))
        for name, solver in solvers.items():
            ev = evaluate(problem, assignment_of(problem, solver.solve(problem)))
            if ev.violation > best.violation + 1e-9:
                result[name].append(float("inf"))  # misses requirements the optimum meets (or misses less)
            else:
                result[name].append((ev.objective - best.objective) / best.objective)
    return {
        name: {
            "mean_gap": statistics.fmean([g for g in values if g != float("inf")] or [0.0]),
            "max_gap": max([g for g in values if g != float("inf")] or [0.0]),
            "optimal_share": sum(1 for g in values if g <= 1e-6) / len(values),
            "more_violation_than_optimum": sum(1 for g in values if g == float("inf")),
        }
        for name, values in result.items()
    }


def simulations(requests: int) -> list[dict[str, Any]]:
    model, example = resnet18(224)
    base = divided("resnet18", model, example, 8, 0.697)
    variants = three_variants(base)
    servers = (ServerProfile("edge:7000", 4e10, hosts=None), ServerProfile("cloud:7000", 1.5e11))
    # A phone 10x slower than the edge server (the split-computing literature's setting).
    phone = DeviceClassSpec("phone", flops=4e9, compute_power_w=3.0, transmit_power_w=1.3, battery_wh=0.5)
    rows = []
    for profile, mbps in STANDARD_UPLINKS_MBPS.items():
        scenario = Scenario(
            name=profile,
            variants=variants,
            servers=servers,
            codecs=DEFAULT_CODECS,
            requirements=Requirements(max_latency_ms=1500, min_accuracy=0.68),
            device_classes=(phone,),
            uplink_trace=tuple(bandwidth_trace(mbps, requests, seed=7)),
            devices=10,
        )
        planner = Planner()
        contenders = {
            "planner": lambda p, d, planner=planner: planner.plan(p, device_id=d),
            "greedy": lambda p, d: GreedySolver().solve(p),
            "neurosurgeon": lambda p, d: NeurosurgeonSolver().solve(p),
            "dads": lambda p, d: DadsSolver().solve(p),
        }
        for name, fn in contenders.items():
            metrics = simulate(scenario, fn, name)
            rows.append(
                {"profile": profile, "uplink_mbps": mbps, **metrics.__dict__}
                if hasattr(metrics, "__dict__")
                else {"profile": profile, "uplink_mbps": mbps, **{k: getattr(metrics, k) for k in metrics.__slots__}}
            )
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(STANDARD_UPLINKS_MBPS)
    planners = list(dict.fromkeys(r["planner"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(planners)
    for k, name in enumerate(planners):
        latency = [
            next(r["mean_latency_ms"] for r in rows if r["planner"] == name and r["profile"] == p) for p in profiles
        ]
        energy = [
            next(r["mean_energy_mj"] for r in rows if r["planner"] == name and r["profile"] == p) for p in profiles
        ]
        xs = [i + k * width for i in range(len(profiles))]
        axes[0].bar(xs, latency, width, label=name)
        axes[1].bar(xs, energy, width, label=name)
    for ax, title in zip(axes, ("mean latency (ms)", "device energy per request (mJ)"), strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(profiles))], profiles)
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle("ResNet-18 on a phone + edge + cloud, simulated over the standard uplink profiles")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/planner.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/planner-simulation.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        sizes, server_counts, trials, instances, requests = [5], [1, 2], 2, 4, 20
    else:
        sizes, server_counts, trials, instances, requests = [5, 10, 20, 40], [1, 2, 4, 8], 10, 40, 300
    timing = solve_times(sizes, server_counts, trials)
    timing += solve_times(sizes[-1:], server_counts[-1:], trials, shape="dag")
    timing += solve_times(sizes[-1:], server_counts[-1:], trials, shape="dag", hosting=True)
    gap = gaps(instances)
    sims = simulations(requests)
    if not args.quick:
        plot(sims, args.plot)
    write_json(args.out, {"benchmark": "planner", "machine": machine_info(),
                          "parameters": {"sizes": sizes, "servers": server_counts, "trials": trials,
                                         "instances": instances, "requests": requests, "torch_threads": 1},
                          "targets": {"cold_p50_ms": TARGET_COLD_MS, "cold_p95_ms": TARGET_COLD_P95_MS,
                                      "cached_p50_us": TARGET_CACHED_US},
                          "solve_times": timing, "gaps": gap, "simulations": sims})  # fmt: skip
    console = Console(width=130)
    table = Table(title="solve time (3 variants x 4 codecs): planner default cold, CP-SAT cold, plan cache")
    for column in ("shape", "hosting", "partitions", "skip edges", "servers", "default p50 ms", "default p95 ms",
                   "CP-SAT p50 ms", "CP-SAT p95 ms", "same optimum", "cached p50 us"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in timing:
        table.add_row(row["shape"], row["hosting"], str(row["partitions"]), str(row["skip_edges"]),
                      str(row["servers"]), f"{row['cold_p50_ms']:.1f}", f"{row['cold_p95_ms']:.1f}",
                      f"{row['cpsat_p50_ms']:.1f}", f"{row['cpsat_p95_ms']:.1f}", str(row["cpsat_agrees"]),
                      f"{row['cached_p50_us']:.1f}")  # fmt: skip
    console.print(table)
    table = Table(title=f"optimality gap vs the exhaustive optimum ({instances} random instances)")
    for column in ("solver", "optimal share", "mean gap", "max gap", "misses more than the optimum"):
        table.add_column(column, justify="right")
    for name, g in gap.items():
        table.add_row(name, f"{g['optimal_share']:.0%}", f"{g['mean_gap']:.2%}", f"{g['max_gap']:.2%}",
                      str(g["more_violation_than_optimum"]))  # fmt: skip
    console.print(table)
    table = Table(title="simulated ResNet-18 on a phone, by uplink profile")
    for column in ("profile", "planner", "SLO violations", "mean ms", "p95 ms", "energy mJ", "accuracy", "plan ms"):
        table.add_column(column, justify="right")
    for r in sims:
        table.add_row(r["profile"], r["planner"], f"{r['slo_violation_rate']:.1%}", f"{r['mean_latency_ms']:.1f}",
                      f"{r['p95_latency_ms']:.1f}", f"{r['mean_energy_mj']:.1f}", f"{r['mean_accuracy']:.3f}",
                      f"{r['mean_plan_ms']:.2f}")  # fmt: skip
    console.print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
