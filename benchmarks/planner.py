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
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_json

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
)
from splitinfer.planner.cost import evaluate
from splitinfer.planner.learned import LearnedSolver
from splitinfer.planner.plan import assignment_of
from splitinfer.planner.planner import Planner
from splitinfer.planner.profiles import DEFAULT_CODECS, random_problem
from splitinfer.sim import STANDARD_UPLINKS_MBPS, simulate
from splitinfer.sim.scenarios import divided, divided_dag, phone_scenario, three_variants
from splitinfer.zoo import build

TARGET_COLD_MS = 50.0
TARGET_COLD_P95_MS = 150.0
TARGET_CACHED_US = 100.0


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
    """ResNet-18 on phones, edge + cloud, under fluctuating bandwidth and draining batteries: the exact
    planner (planning on what the device believes, with its plan cache), the learned planner, greedy,
    Neurosurgeon and DADS, each scored on what actually happened."""
    scenarios = [
        phone_scenario(profile, mbps, requests, seed=7, variability=0.6)
        for profile, mbps in STANDARD_UPLINKS_MBPS.items()
    ]
    scenarios.append(phone_scenario("4G volatile", STANDARD_UPLINKS_MBPS["4G"], requests, seed=7, variability=1.0))
    scenarios.append(phone_scenario("3G low battery", STANDARD_UPLINKS_MBPS["3G"], requests, seed=7,
                                    variability=0.6, battery_start_percent=25))  # fmt: skip
    learned = LearnedSolver()
    rows = []
    for scenario in scenarios:
        planner = Planner()
        contenders = {
            "exact": lambda p, d, planner=planner: planner.plan(p, device_id=d),
            "learned": lambda p, d: learned.solve(p),
            "greedy": lambda p, d: GreedySolver().solve(p),
            "neurosurgeon": lambda p, d: NeurosurgeonSolver().solve(p),
            "dads": lambda p, d: DadsSolver().solve(p),
        }
        for name, fn in contenders.items():
            metrics = simulate(scenario, fn, name)
            mean = statistics.fmean(scenario.uplink_trace)
            rows.append({"profile": scenario.name, "uplink_mbps": mean,
                         **{k: getattr(metrics, k) for k in metrics.__slots__}})  # fmt: skip
    return rows


def learned_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Per profile, the learned planner against the exact one: better, worse or equal on each metric."""
    notes = []
    for profile in dict.fromkeys(r["profile"] for r in rows):
        exact = next(r for r in rows if r["profile"] == profile and r["planner"] == "exact")
        learned = next(r for r in rows if r["profile"] == profile and r["planner"] == "learned")
        parts = []
        for key, label, unit in (("slo_violation_rate", "SLO violations", "%"), ("mean_latency_ms", "mean", " ms"),
                                 ("p95_latency_ms", "p95", " ms"), ("mean_energy_mj", "energy", " mJ")):  # fmt: skip
            a, b = learned[key], exact[key]
            scale = 100 if unit == "%" else 1
            if abs(a - b) <= 0.005 * max(abs(b), 1e-9) + (0.0005 if unit == "%" else 0):
                parts.append(f"{label} equal")
            else:
                word = "lower" if a < b else "HIGHER"
                parts.append(f"{label} {word} ({a * scale:.1f}{unit} vs {b * scale:.1f}{unit})")
        acc = learned["mean_accuracy"] - exact["mean_accuracy"]
        parts.append(f"accuracy {acc:+.3f}")
        notes.append(f"- {profile}: learned vs exact: " + ", ".join(parts) + ".")
    return notes


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    planners = list(dict.fromkeys(r["planner"] for r in rows))
    panels = (("mean_latency_ms", "mean latency (ms)", True), ("p95_latency_ms", "p95 latency (ms)", True),
              ("mean_energy_mj", "device energy per request (mJ)", True),
              ("slo_violation_rate", "SLO violation rate", False))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.2))
    width = 0.8 / len(planners)
    for k, name in enumerate(planners):
        xs = [i + k * width for i in range(len(profiles))]
        for ax, (key, _, _) in zip(axes, panels, strict=True):
            values = [next(r[key] for r in rows if r["planner"] == name and r["profile"] == p) for p in profiles]
            ax.bar(xs, values, width, label=name)
    for ax, (_, title, log) in zip(axes, panels, strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(profiles))], profiles, rotation=20, fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("ResNet-18 on phones + edge + cloud, simulated under fluctuating uplinks and draining batteries")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


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
                          "solve_times": timing, "gaps": gap, "simulations": sims,
                          "learned_notes": learned_notes(sims)})  # fmt: skip
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
    for column in ("profile", "planner", "SLO violations", "mean ms", "p95 ms", "energy mJ", "accuracy", "plan ms",
                   "plan p50 ms"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in sims:
        table.add_row(r["profile"], r["planner"], f"{r['slo_violation_rate']:.1%}", f"{r['mean_latency_ms']:.1f}",
                      f"{r['p95_latency_ms']:.1f}", f"{r['mean_energy_mj']:.1f}", f"{r['mean_accuracy']:.3f}",
                      f"{r['mean_plan_ms']:.2f}", f"{r['p50_plan_ms']:.3f}")  # fmt: skip
    console.print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
