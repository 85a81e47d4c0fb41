"""Standard scenarios: a zoo model divided into partitions, three variants of it, phone + edge + cloud.

Shared by the planner benchmark (``benchmarks/planner.py``) and the learned planner's training
(``splitinfer.planner.training``), so that the policy is trained and evaluated on the same world.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import replace

from splitinfer.planner.problem import Requirements, ServerProfile, VariantProfile
from splitinfer.planner.profiles import DEFAULT_CODECS
from splitinfer.sim.simulator import DeviceClassSpec, Metrics, Scenario
from splitinfer.sim.traces import bandwidth_trace

__all__ = [
    "EDGE_CLOUD",
    "PHONE",
    "SLO",
    "compare_learned",
    "divided",
    "divided_dag",
    "phone_scenario",
    "resnet18_variants",
    "three_variants",
    "training_scenario",
]

#: A phone 10x slower than the edge server (the split-computing literature's setting), on battery.
PHONE = DeviceClassSpec("phone", flops=4e9, compute_power_w=3.0, transmit_power_w=1.3, battery_wh=0.5)
EDGE_CLOUD = (ServerProfile("edge:7000", 4e10, hosts=None), ServerProfile("cloud:7000", 1.5e11))
SLO = Requirements(max_latency_ms=1500, min_accuracy=0.68)


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


def divided(name: str, model: object, example: tuple, partitions: int, accuracy: float) -> VariantProfile:  # type: ignore[type-arg,unused-ignore]
    """The model cut at (about) ``partitions - 1`` of its narrow cuts: a chain."""
    from splitinfer.divider import partition_at
    from splitinfer.graph import ModelGraph, narrow_cuts
    from splitinfer.planner.build import variant_from_division
    from splitinfer.program import export_program

    graph = ModelGraph.build(export_program(model, example), example)  # type: ignore[arg-type]
    cuts = [c.position for c in narrow_cuts(graph)][1:-1]
    step = max(1, len(cuts) // max(1, partitions - 1))
    chosen = cuts[::step][: partitions - 1]
    return variant_from_division(partition_at(graph, name, chosen), "fp32", accuracy)


def divided_dag(name: str, model: object, example: tuple, partitions: int, accuracy: float) -> VariantProfile:  # type: ignore[type-arg,unused-ignore]
    """Cut at evenly spaced positions of the topological order, narrow or not: residual blocks are split
    inside, so skip connections cross partitions (a DAG with up to two tensors on a cut)."""
    from splitinfer.divider import partition_at
    from splitinfer.graph import ModelGraph
    from splitinfer.planner.build import variant_from_division
    from splitinfer.program import export_program

    graph = ModelGraph.build(export_program(model, example), example)  # type: ignore[arg-type]
    n = len(graph.nodes)
    return variant_from_division(
        partition_at(graph, name, [round(k * n / partitions) for k in range(1, partitions)]), "fp32", accuracy
    )


@functools.cache
def resnet18_variants(partitions: int = 8) -> tuple[VariantProfile, ...]:
    """ResNet-18 (224x224) at its narrow cuts, fp32 / fp16 / int8 (top-1 0.697 / 0.696 / 0.687 declared)."""
    from splitinfer.zoo import resnet18

    model, example = resnet18(224)
    return three_variants(divided("resnet18", model, example, partitions, 0.697))


def phone_scenario(
    name: str,
    mean_mbps: float,
    requests: int,
    *,
    seed: int = 7,
    variability: float = 0.35,
    variants: tuple[VariantProfile, ...] | None = None,
    requirements: Requirements = SLO,
    battery_start_percent: float = 100.0,
    devices: int = 10,
) -> Scenario:
    """ResNet-18 on phones with edge and cloud servers, the uplink fluctuating around ``mean_mbps``."""
    return Scenario(
        name=name,
        variants=variants if variants is not None else resnet18_variants(),
        servers=EDGE_CLOUD,
        codecs=DEFAULT_CODECS,
        requirements=requirements,
        device_classes=(PHONE,),
        uplink_trace=tuple(bandwidth_trace(mean_mbps, requests, seed=seed, variability=variability)),
        devices=devices,
        battery_start_percent=battery_start_percent,
        seed=seed,
    )


def training_scenario(
    rng: random.Random, requests: int, variants: tuple[VariantProfile, ...] | None = None
) -> Scenario:
    """A random world for training: mean uplink log-uniform over 0.08-30 Mbps (CAT1 to beyond Wi-Fi), its
    fluctuation 0.2-0.9, batteries starting anywhere from 10% to full, budgets of 0.5-2 s."""
    mean = math.exp(rng.uniform(math.log(0.08), math.log(30.0)))
    budget = rng.choice([500.0, 1000.0, 1500.0, 2000.0])
    return phone_scenario(
        "training",
        mean,
        requests,
        seed=rng.randrange(1 << 30),
        variability=rng.uniform(0.2, 0.9),
        variants=variants,
        requirements=Requirements(max_latency_ms=budget, min_accuracy=SLO.min_accuracy),
        battery_start_percent=rng.uniform(10, 100),
        devices=2,
    )


def compare_learned(requests: int = 60) -> list[Metrics]:
    """The learned planner (the committed policy) and the exact planner on the standard profiles, uplinks
    fluctuating (0.6; 1.0 for "4G volatile"): a short version of the planner benchmark's comparison."""
    from splitinfer.planner.learned import LearnedSolver
    from splitinfer.planner.plan import Plan
    from splitinfer.planner.planner import Planner
    from splitinfer.planner.problem import PlanningProblem
    from splitinfer.sim.simulator import simulate
    from splitinfer.sim.traces import STANDARD_UPLINKS_MBPS

    scenarios = [phone_scenario(k, v, requests, variability=0.6) for k, v in STANDARD_UPLINKS_MBPS.items()]
    scenarios.append(phone_scenario("4G volatile", STANDARD_UPLINKS_MBPS["4G"], requests, variability=1.0))
    learned = LearnedSolver()
    out = []
    for scenario in scenarios:
        planner = Planner()

        def exact(problem: PlanningProblem, device_id: str, planner: Planner = planner) -> Plan:
            return planner.plan(problem, device_id=device_id)

        out.append(simulate(scenario, exact, "exact"))
        out.append(simulate(scenario, lambda problem, _: learned.solve(problem), "learned"))
    return out
