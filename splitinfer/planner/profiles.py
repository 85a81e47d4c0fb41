"""Default codec profiles, and random planning instances for tests and benchmarks."""

from __future__ import annotations

import random

from splitinfer.codecs import CodecSpec
from splitinfer.planner.problem import (
    CodecProfile,
    DeviceProfile,
    Edge,
    PartitionCost,
    PlanningProblem,
    Requirements,
    ServerProfile,
    VariantProfile,
)

__all__ = ["DEFAULT_CODECS", "random_problem", "random_variant"]

#: Size ratios and encode+decode costs measured by benchmarks/codecs.py on post-ReLU activations
#: (1x64x56x56, one x86 core; docs/benchmarks.md). Accuracy drops are declared conservatively until a model's
#: own measurement replaces them (the demo measures its own).
DEFAULT_CODECS: tuple[CodecProfile, ...] = (
    CodecProfile(CodecSpec.parse("none"), 1.0, 1 / 6.0e9, source="measured: benchmarks/codecs.py"),
    CodecProfile(CodecSpec.parse("lz4"), 0.68, 1 / 0.30e9 + 1 / 1.2e9, source="measured: benchmarks/codecs.py"),
    CodecProfile(
        CodecSpec.parse("fp16+lz4"),
        0.40,
        1 / 0.5e9 + 1 / 1.8e9,
        default_accuracy_drop=0.001,
        source="size/time measured (benchmarks/codecs.py); accuracy drop declared",
    ),
    CodecProfile(
        CodecSpec.parse("int8+zstd"),
        0.16,
        1 / 0.17e9 + 1 / 0.5e9,
        default_accuracy_drop=0.01,
        source="size/time measured (benchmarks/codecs.py); accuracy drop declared",
    ),
)


def random_variant(
    rng: random.Random,
    model: str,
    variant: str,
    n: int,
    dag: bool,
    accuracy: float,
    *,
    wide: float = 0.0,
    outputs: int = 1,
) -> VariantProfile:
    """A chain (or, with ``dag``, a DAG with skip edges and fan-out) of ``n`` partitions. ``wide``: chance
    that a cut carries a second tensor (sizes from 1 KB to 10 MB); ``outputs``: model outputs, each from
    the last partition or, in a DAG, from an earlier one."""
    partitions = tuple(PartitionCost(f"p{i}", rng.uniform(5e7, 5e8), rng.randint(1 << 16, 1 << 22)) for i in range(n))
    edges = [Edge("input", -1, 0, rng.choice([150_528, 602_112]))]
    if wide and rng.random() < wide:
        edges.append(Edge("input2", -1, 0, rng.choice([1_000, 10_000_000])))
    for i in range(n - 1):
        edges.append(Edge(f"t{i}", i, i + 1, rng.randint(2_000, 800_000)))
        if wide and rng.random() < wide:
            edges.append(Edge(f"w{i}", i, i + 1, rng.choice([1_000, 40_000, 10_000_000])))
        if dag and i + 2 < n and rng.random() < 0.4:
            edges.append(Edge(f"t{i}", i, i + 2, 0))  # fan-out: the same tensor to a later partition
    if dag:
        edges = [Edge(e.tensor, e.src, e.dst, e.nbytes or _bytes_of(edges, e.tensor)) for e in edges]
    edges.append(Edge("output", n - 1, n, rng.choice([40, 4_000])))
    for k in range(1, outputs):
        src = rng.randrange(n) if dag else n - 1
        edges.append(Edge(f"output{k}", src, n, rng.choice([40, 4_000, 400_000])))
    return VariantProfile(model, variant, accuracy, False, partitions, tuple(edges))


def _bytes_of(edges: list[Edge], tensor: str) -> int:
    return next(e.nbytes for e in edges if e.tensor == tensor and e.nbytes)


def random_problem(
    seed: int,
    *,
    partitions: int = 4,
    servers: int = 2,
    variants: int = 2,
    codecs: int = 3,
    dag: bool = False,
    hosting: bool = True,
    wide: float = 0.0,
    outputs: int = 1,
    budget_ms: tuple[float, ...] = (0.0, 100.0, 500.0, 2000.0),
    objectives: tuple[str, ...] = ("auto", "latency", "energy"),
) -> PlanningProblem:
    """A reproducible random instance; small ones are what the exhaustive oracle can check."""
    rng = random.Random(seed)
    vs = tuple(
        random_variant(
            rng,
            "m",
            ["fp32", "fp16", "int8", "small"][k % 4],
            partitions,
            dag,
            0.9 - 0.02 * k,
            wide=wide,
            outputs=outputs,
        )
        for k in range(variants)
    )
    server_profiles = []
    for s in range(servers):
        hosts = None
        if hosting and s > 0:  # the first server hosts everything; the others a random subset
            hosts = frozenset(f"m@{v.variant}/{p.name}" for v in vs for p in v.partitions if rng.random() < 0.7)
        server_profiles.append(ServerProfile(f"10.0.0.{s + 1}:7000", rng.uniform(5e9, 5e10), rng.uniform(0, 5), hosts))
    device = DeviceProfile(
        flops=rng.uniform(2e8, 5e9),
        uplink_mbps=rng.choice([0.13, 1.1, 5.85, 18.88]),
        downlink_mbps=rng.choice([1.1, 5.85, 18.88, 50.0]),
        rtt_ms=rng.uniform(5, 80),
        battery_percent=rng.uniform(5, 100),
        charging=rng.random() < 0.3,
        memory_bytes=rng.choice([1 << 30, 1 << 22]),
    )
    requirements = Requirements(
        max_latency_ms=rng.choice(budget_ms),
        min_accuracy=rng.choice([0.0, 0.85, 0.895]),
        objective=rng.choice(objectives),
    )
    return PlanningProblem(vs, device, tuple(server_profiles), DEFAULT_CODECS[:codecs], requirements)
