"""The learned planner: a small policy network that picks one of a fixed set of plan strategies per request.

A *strategy* is a plan shape that applies to any problem: which variant (by accuracy rank), how much of the
model the device runs as its head (a fraction of the partitions, or all of it), and the codec for the tensors
the device sends (what comes back travels as is); the server part runs on the fastest server that hosts it
(per partition when no one server hosts it all). The policy maps the request's conditions (bandwidth, RTT,
battery, queues, requirements; :func:`features`) to a score per strategy; strategies that cannot run in the
problem (a variant or codec it lacks, a head the device cannot hold, partitions no server hosts) are masked
out.

It is trained on the scenario simulator (``splitinfer.sim.env``, ``make train-planner``) from the *outcome* of
each choice under the conditions that actually happened, not those the device believed, so it can learn
choices that are robust where bandwidth fluctuates — which the exact planner, optimising the believed
conditions, cannot. It is not exact: see docs/benchmarks.md for where it wins and loses.

The policy is stored as safetensors (weights) with the strategy list and feature names in its metadata: no
pickle. Inference is numpy only (a 2-layer MLP), well under a millisecond.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from splitinfer.planner.base import Solver, allowed_servers, finish, none_codec, require_candidates
from splitinfer.planner.cost import DEVICE, Assignment, compute_terms, crossing_tensors, energy_weight_s_per_j
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = [
    "DEFAULT_POLICY",
    "FEATURES",
    "LearnedSolver",
    "Policy",
    "Strategy",
    "default_strategies",
    "features",
]

FORMAT = "splitinfer-learned-planner/1"
DEFAULT_POLICY = Path(__file__).resolve().parent / "policies" / "resnet18-phone.safetensors"
#: Head sizes are multiples of 1/HEAD_STEPS of the partitions.
HEAD_STEPS = 8
CODEC_NAMES = ("none", "lz4", "fp16+lz4", "int8+zstd")

#: Features are clipped to +-FEATURE_BOUND (a 1 Tbit/s uplink is as good as a 1 Gbit/s one to the policy).
FEATURE_BOUND = 8.0
FEATURES = (
    "log2 uplink Mbps / 5",
    "log2 downlink Mbps / 5",
    "rtt ms / 100",
    "battery fraction",
    "charging",
    "mean server queue ms / 10",
    "log10 device FLOP/s - 9",
    "has latency budget",
    "log2 latency budget ms / 10",
    "has accuracy floor",
    "accuracy floor",
    "objective auto",
    "objective latency",
    "objective energy",
    "energy weight s/J / 10",
    "device computes",
)


@dataclass(frozen=True, slots=True)
class Strategy:
    """A plan shape: variant by accuracy rank (0 the most accurate), device head as ``head`` / HEAD_STEPS of
    the partitions (HEAD_STEPS: all on the device), one codec for the tensors the device sends."""

    variant_rank: int
    head: int
    codec: str

    def __str__(self) -> str:
        where = "device only" if self.head >= HEAD_STEPS else f"head {self.head}/{HEAD_STEPS}"
        return f"variant#{self.variant_rank} {where} {self.codec}"

    def assignment(self, problem: PlanningProblem) -> Assignment | None:
        """This strategy in ``problem``, or None when it cannot run there."""
        if not problem.variants:
            return None
        order = sorted(range(len(problem.variants)), key=lambda v: -problem.variants[v].accuracy)
        if self.variant_rank >= len(order):
            return None
        v = order[self.variant_rank]
        variant = problem.variants[v]
        n = len(variant.partitions)
        head = n if self.head >= HEAD_STEPS else min(n - 1, round(self.head * n / HEAD_STEPS))
        device = problem.device
        if head > 0 and not device.computes:
            return None
        if sum(p.param_bytes for p in variant.partitions[:head]) > device.memory_bytes:
            return None
        codec = next((k for k, c in enumerate(problem.codecs) if str(c.codec) == self.codec), None)
        if codec is None:
            return None
        locations = [DEVICE] * n
        if head < n:
            options = [allowed_servers(problem, v, p) for p in range(head, n)]
            if not all(options):
                return None
            common = set(options[0]).intersection(*options[1:])
            if common:  # one server for the whole server part: no hops between servers
                best = min(common, key=lambda s: sum(compute_terms(problem, variant, p, s) for p in range(head, n)))
                locations[head:] = [best] * (n - head)
            else:
                for p, allowed in zip(range(head, n), options, strict=True):
                    times = {s: compute_terms(problem, variant, p, s) for s in allowed}
                    locations[p] = min(allowed, key=times.__getitem__)
        # The codec is for what the device sends; what comes back (small outputs) travels as is, so a lossy
        # codec costs its accuracy drop once.
        lossless = none_codec(problem)
        sent = {e.tensor for e in variant.edges if e.src < 0 or (e.src < n and locations[e.src] == DEVICE)}
        names = crossing_tensors(variant, tuple(locations))
        return Assignment(v, tuple(locations), tuple((t, codec if t in sent else lossless) for t in names))


def default_strategies() -> tuple[Strategy, ...]:
    """Three variants x heads 0..7/8 x four codecs, and device-only per variant: 99 strategies."""
    out = [Strategy(rank, head, codec) for rank in range(3) for head in range(HEAD_STEPS) for codec in CODEC_NAMES]
    out += [Strategy(rank, HEAD_STEPS, "none") for rank in range(3)]
    return tuple(out)


def features(problem: PlanningProblem) -> np.ndarray:
    """The request's conditions as the policy sees them (see FEATURES), float32."""
    device, req = problem.device, problem.requirements
    queues = [s.queue_ms for s in problem.servers]
    values = [
        math.log2(max(device.uplink_mbps, 1e-3)) / 5,
        math.log2(max(device.downlink_mbps, 1e-3)) / 5,
        device.rtt_ms / 100,
        device.battery_percent / 100,
        float(device.charging),
        (sum(queues) / len(queues) if queues else 0.0) / 10,
        math.log10(max(device.flops, 1.0)) - 9,
        float(req.max_latency_ms > 0),
        math.log2(req.max_latency_ms) / 10 if req.max_latency_ms > 0 else 0.0,
        float(req.min_accuracy > 0),
        req.min_accuracy,
        float(req.objective == "auto"),
        float(req.objective == "latency"),
        float(req.objective == "energy"),
        energy_weight_s_per_j(problem) / 10,
        float(device.computes),
    ]
    return np.clip(np.asarray(values, dtype=np.float32), -FEATURE_BOUND, FEATURE_BOUND)


class Policy:
    """A 2-layer tanh MLP from features to one logit per strategy (numpy; weights from safetensors)."""

    def __init__(self, weights: dict[str, np.ndarray], strategies: tuple[Strategy, ...], meta: dict[str, str]) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.strategies = strategies
        self.meta = meta
        if self.weights["w3"].shape[1] != len(strategies) or self.weights["w1"].shape[0] != len(FEATURES):
            raise ValueError("policy weights do not match its strategies or the feature list")

    def logits(self, x: np.ndarray) -> np.ndarray:
        w = self.weights
        h = np.tanh(x @ w["w1"] + w["b1"])
        h = np.tanh(h @ w["w2"] + w["b2"])
        return np.asarray(h @ w["w3"] + w["b3"])

    def save(self, path: Path, description: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            **self.meta,
            "format": FORMAT,
            "strategies": json.dumps([[s.variant_rank, s.head, s.codec] for s in self.strategies]),
            "features": json.dumps(list(FEATURES)),
            "head_steps": str(HEAD_STEPS),
        }
        if description:
            meta["description"] = description
        save_file({k: np.ascontiguousarray(v) for k, v in self.weights.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path = DEFAULT_POLICY) -> Policy:
        with safe_open(str(path), framework="numpy") as handle:
            meta = dict(handle.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} policy (format {meta.get('format')!r})")
        if json.loads(meta["features"]) != list(FEATURES) or int(meta["head_steps"]) != HEAD_STEPS:
            raise ValueError(f"{path} was trained on other features than this code computes")
        strategies = tuple(Strategy(int(r), int(h), str(c)) for r, h, c in json.loads(meta["strategies"]))
        return cls(load_file(str(path)), strategies, meta)


class LearnedSolver:
    """A :class:`~splitinfer.planner.base.Solver` that asks the policy which strategy to use.

    Masked strategies are skipped; the highest-scoring strategy that runs in the problem is the plan. When
    none runs (a problem unlike the policy's: a device-only strategy always runs where a variant fits the
    device), ``fallback`` plans instead.
    """

    name = "learned"

    def __init__(self, policy: Policy | None = None, fallback: Solver | None = None) -> None:
        self.policy = policy or Policy.load()
        self._fallback = fallback

    def choose(self, problem: PlanningProblem) -> tuple[Strategy, Assignment] | None:
        logits = self.policy.logits(features(problem))
        for k in np.argsort(-logits):
            strategy = self.policy.strategies[int(k)]
            a = strategy.assignment(problem)
            if a is not None:
                return strategy, a
        return None

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        chosen = self.choose(problem)
        if chosen is None:
            from splitinfer.planner.dag import DagSolver

            fallback: Solver = self._fallback or DagSolver()
            return fallback.solve(problem)
        return finish(problem, chosen[1], f"{self.name} ({chosen[0]})")
