"""An exact label-setting solver for chain-shaped divisions, and the solver that picks it or CP-SAT.

When every tensor flows between consecutive partitions (the model input into the first, the output out of
the last) — the usual shape of a division at narrow cuts — a plan is a path: partition by partition, the
place it runs (device head, a server, device tail) and the codec of the tensor between. The objective is
monotone in the path's latency, device energy, accuracy lost to codecs and device memory, so keeping, per
(partition, place), only the labels no other label beats on all four is exact; the best full path is then
scored by :func:`~splitinfer.planner.cost.evaluate`, requirements and all. DAG-shaped divisions go to
CP-SAT. Both are checked against the exhaustive optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from splitinfer.planner.base import allowed_servers, finish, require_candidates, undominated_servers
from splitinfer.planner.cost import (
    ACCURACY_TIEBREAK_S,
    DEVICE,
    RECEIVE_POWER_FRACTION,
    Assignment,
    Evaluation,
    better,
    compute_terms,
    energy_weight_s_per_j,
    evaluate,
    transfer_terms,
)
from splitinfer.planner.dag import DagSolver
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import Edge, PlanningProblem, VariantProfile

__all__ = ["AutoSolver", "ChainSolver", "is_chain", "is_simple_chain"]

HEAD, TAIL = -2, -3  # device places: before the servers, after them


def is_chain(variant: VariantProfile) -> bool:
    """Every edge runs between consecutive partitions (the model input into the first, outputs out of the
    last); a cut may carry several tensors."""
    n = len(variant.partitions)
    return all(e.dst == e.src + 1 or (e.src == -1 and e.dst == 0) for e in variant.edges) and all(
        any(e.src == p - 1 and e.dst == p for e in variant.edges) for p in range(n)
    )


def is_simple_chain(variant: VariantProfile) -> bool:
    """A chain with exactly one tensor on every cut and one model output: what the label solver below
    handles. Others go to :class:`~splitinfer.planner.dag.DagSolver`."""
    n = len(variant.partitions)
    into = [0] * (n + 1)
    for e in variant.edges:
        into[e.dst] += 1
    return is_chain(variant) and all(count == 1 for count in into)


@dataclass(frozen=True, slots=True)
class _Label:
    #: Latency + energy weight x energy + tie-break x accuracy drop: the part of the objective that adds up.
    score: float
    latency: float
    drop: float
    device_bytes: int
    places: tuple[int, ...]
    codecs: tuple[tuple[str, int], ...]


def _pareto(labels: list[_Label], key: Callable[[_Label], tuple[float, ...]]) -> list[_Label]:
    """Labels no other label beats or equals on every component of ``key`` (the first one kept on ties)."""
    labels.sort(key=key)
    kept: list[tuple[tuple[float, ...], _Label]] = []
    for label in labels:
        k = key(label)
        if not any(all(a <= b for a, b in zip(other, k, strict=True)) for other, _ in kept):
            kept.append((k, label))
    return [label for _, label in kept]


class ChainSolver:
    """Exact for chain-shaped divisions (see module doc); refuses others with ValueError."""

    name = "chain"

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        if not all(is_simple_chain(v) for v in problem.variants):
            # Several tensors on a cut, or several outputs: the DP over live tensors is exact for those.
            return replace(DagSolver().solve(problem), solver=self.name)
        best: tuple[Evaluation, Assignment] | None = None
        for v in range(len(problem.variants)):
            for a in self._candidates(problem, v):
                ev = evaluate(problem, a)
                if best is None or better(ev, best[0]):
                    best = (ev, a)
        if best is None:
            raise ValueError("no variant fits the device and its servers")
        return finish(problem, best[1], self.name)

    def _candidates(self, problem: PlanningProblem, v: int) -> list[Assignment]:
        variant = problem.variants[v]
        device = problem.device
        n = len(variant.partitions)
        servers = undominated_servers(problem)
        incoming = {e.dst: e for e in variant.edges if e.dst < n}
        outgoing = next(e for e in variant.edges if e.dst == n)
        device_power = device.compute_power_w

        def location(place: int) -> int:
            return DEVICE if place in (HEAD, TAIL) else place

        codecs = range(len(problem.codecs))
        weight = energy_weight_s_per_j(problem)
        req = problem.requirements
        # Only what the objective can still depend on beyond the additive score is kept apart.
        memory_binds = sum(p.param_bytes for p in variant.partitions) > device.memory_bytes

        def key(label: _Label) -> tuple[float, ...]:
            parts: list[float] = [label.score]
            if req.max_latency_ms > 0:
                parts.append(label.latency)
            if req.min_accuracy > 0:
                parts.append(label.drop)
            if memory_binds:
                parts.append(label.device_bytes)
            return tuple(parts)

        labels: dict[int, list[_Label]] = {HEAD: [_Label(0.0, 0.0, 0.0, 0, (), ())]}
        for p in range(n):
            edge = incoming[p]
            options = set(allowed_servers(problem, v, p))
            server_labels = [label for place in servers for label in labels.get(place, [])]
            # Transfers cost the same between any two servers, so a move is up, down, across or none, and the
            # best codecs for each kind are found once per partition.
            moves_by_kind = {
                kind: _pareto([self._step(problem, variant.variant, edge, src, dst, c, weight) for c in codecs], key)
                for kind, (src, dst) in {"up": (DEVICE, 0), "down": (0, DEVICE), "across": (0, 1)}.items()
            }
            stay = [_Label(0.0, 0.0, 0.0, 0, (), ())]
            nxt: dict[int, list[_Label]] = {}
            for target in [HEAD, *servers, TAIL]:
                if target not in (HEAD, TAIL) and target not in options:
                    continue
                if target in (HEAD, TAIL) and not device.computes:
                    continue
                on_device = target in (HEAD, TAIL)
                compute = compute_terms(problem, variant, p, location(target))
                params = variant.partitions[p].param_bytes if on_device else 0
                base = compute + weight * (compute * device_power if on_device else 0.0)
                if target == HEAD:
                    sources = [(labels.get(HEAD, []), stay)]
                elif target == TAIL:
                    # Head straight to tail would be device-only, which the head alone already covers; keeping
                    # the tail for plans that used servers keeps the per-request overhead (which differs
                    # between the two) out of the labels compared here.
                    sources = [
                        (labels.get(TAIL, []), stay),
                        (server_labels, moves_by_kind["down"]),
                    ]
                else:
                    others = [label for place in servers if place != target for label in labels.get(place, [])]
                    sources = [
                        (labels.get(HEAD, []), moves_by_kind["up"]),
                        (labels.get(target, []), stay),
                        (others, moves_by_kind["across"]),
                    ]
                bucket = nxt.setdefault(target, [])
                for group, steps in sources:
                    for step in steps:
                        for label in group:
                            if label.device_bytes + params > device.memory_bytes:
                                continue
                            bucket.append(
                                _Label(
                                    label.score + base + step.score,
                                    label.latency + compute + step.latency,
                                    label.drop + step.drop,
                                    label.device_bytes + params,
                                    (*label.places, target),
                                    (*label.codecs, *step.codecs),
                                )
                            )
            labels = {place: _pareto(bucket, key) for place, bucket in nxt.items() if bucket}
        candidates = []
        for place, bucket in labels.items():
            for label in bucket:
                codecs_used = list(label.codecs)
                if location(place) != DEVICE:  # the output goes back to the device: its codec matters too
                    for codec in codecs:
                        candidates.append(self._assignment(v, label, [*codecs_used, (outgoing.tensor, codec)]))
                else:
                    candidates.append(self._assignment(v, label, codecs_used))
        return candidates

    @staticmethod
    def _step(
        problem: PlanningProblem, variant: str, edge: Edge, src: int, dst: int, codec: int, weight: float
    ) -> _Label:
        """Sending ``edge``'s tensor from ``src`` to ``dst`` (locations) with ``codec``, as a label increment."""
        profile = problem.codecs[codec]
        seconds, tx, rx, dev_codec = transfer_terms(problem, src, dst, edge.nbytes, profile, edge.size_ratio(profile))
        device = problem.device
        joules = (
            dev_codec * device.compute_power_w
            + tx * device.transmit_power_w
            + rx * device.transmit_power_w * RECEIVE_POWER_FRACTION
        )
        drop = profile.drop(variant) if profile.codec.is_lossy else 0.0
        score = seconds + weight * joules + ACCURACY_TIEBREAK_S * drop
        return _Label(score, seconds, drop, 0, (), ((edge.tensor, codec),))

    @staticmethod
    def _assignment(v: int, label: _Label, codecs: list[tuple[str, int]]) -> Assignment:
        locations = tuple(DEVICE if place in (HEAD, TAIL) else place for place in label.places)
        return Assignment(v, locations, tuple(codecs))


class AutoSolver:
    """The planner's default: the exact label solver when every variant is a simple chain, the exact DP over
    live tensors (:class:`~splitinfer.planner.dag.DagSolver`) for every other shape."""

    name = "auto"

    def __init__(self) -> None:
        self.chain = ChainSolver()
        self.dag = DagSolver()

    def solve(self, problem: PlanningProblem) -> Plan:
        if problem.variants and all(is_simple_chain(v) for v in problem.variants):
            return self.chain.solve(problem)
        return self.dag.solve(problem)
