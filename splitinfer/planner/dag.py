"""An exact solver for every division shape: dynamic programming over a topological order, live tensors as state.

A plan puts a prefix of the partitions (in topological order) on the device as its head, a suffix as its
tail, a server on each partition in between, and a codec on each tensor that crosses between places. The
solver walks the partitions in order. After partition ``k`` its state is

* the phase: still in the device head, in the server part, or in the device tail; and
* for every *live* tensor (produced at or before ``k`` and read after it, or a model output): where it was
  produced, and which of its edges so far cross between places and how (device to server, server to
  device, server to another server).

Everything the rest of the plan can cost depends on the state alone, so labels reaching the same state
compete directly. A tensor's codec is chosen when its last reader is placed (then every crossing of it is
known): all codecs are priced together over its crossings, since one tensor has one codec whatever the
number of its readers. The additive part of the objective (latency, weighted device energy, the accuracy
tie-break) is a label's score; when the request has a latency budget, an accuracy floor or a device memory
that binds, labels also carry latency, accuracy lost and device bytes and only the Pareto-undominated ones
survive. Every requirement's violation grows with latency and accuracy lost, so this is exact for the
lexicographic order of :func:`~splitinfer.planner.cost.better` (violation first, then the objective), and
the winner is scored again by :func:`~splitinfer.planner.cost.evaluate`.

The state space grows with the number of tensors live across a cut (the division's width, usually one or
two: a residual block's main path and skip) and with the servers no other server dominates; chains with one
tensor per cut have one live tensor. Checked against the exhaustive optimum by the property tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from splitinfer.planner.base import allowed_servers, finish, require_candidates, undominated_servers
from splitinfer.planner.cost import (
    ACCURACY_TIEBREAK_S,
    ACCURACY_VIOLATION_WEIGHT,
    DEVICE,
    RANK_TOLERANCE,
    RECEIVE_POWER_FRACTION,
    Assignment,
    Evaluation,
    better,
    compute_terms,
    energy_weight_s_per_j,
    evaluate,
    rank_less,
    request_overhead_s,
    transfer_terms,
    violation_of,
)
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["DagSolver"]

HEAD_PHASE, SERVER_PHASE, TAIL_PHASE = 0, 1, 2
#: Crossing kinds of an edge.
UP, DOWN, ACROSS = 0, 1, 2

#: (score, latency s, accuracy lost, device bytes, back pointer). The back pointer is a linked list of
#: (previous, partition, location, codec choices) for rebuilding the assignment.
_Label = tuple[float, float, float, int, object]
#: A live tensor: (tensor index, location of its producer, crossing edges so far as (edge, kind) pairs).
_Live = tuple[int, int, tuple[tuple[int, int], ...]]


@dataclass(frozen=True, slots=True)
class _Dims:
    latency: bool
    drop: bool
    memory: bool


def _kind(src: int, dst: int) -> int | None:
    if src == dst:
        return None
    if src == DEVICE:
        return UP
    if dst == DEVICE:
        return DOWN
    return ACROSS


class DagSolver:
    """Exact on chains (any number of tensors per cut, any number of outputs) and DAGs (see module doc)."""

    name = "dag-dp"

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        servers = undominated_servers(problem)
        best: tuple[Evaluation, Assignment] | None = None
        # A quick first pass with one server gives an incumbent; the full search then drops every label that
        # cannot beat it in the lexicographic order: whose violation, at the least latency the rest could
        # add, already exceeds the incumbent's, or which cannot do better on violation and whose score plus
        # a lower bound on the rest exceeds the incumbent's objective.
        passes = [_incumbent_pool(problem, servers), servers] if len(servers) > 1 else [servers]
        for pool in passes:
            for v in range(len(problem.variants)):
                bound = None if best is None else (best[0].violation, best[0].objective)
                a = _VariantSearch(problem, v, pool).best(bound)
                if a is None:
                    continue
                ev = evaluate(problem, a)
                if best is None or better(ev, best[0]):
                    best = (ev, a)
        if best is None:
            raise ValueError("no variant fits the device and its servers")
        return finish(problem, best[1], self.name)


def _incumbent_pool(problem: PlanningProblem, servers: list[int]) -> list[int]:
    """The two servers (one of two) that host the most partitions, faster first on ties: a quick first pass
    over them finds a good incumbent."""

    def merit(s: int) -> tuple[int, float]:
        hosted = [(v, p) for v, var in enumerate(problem.variants) for p in range(len(var.partitions))
                  if s in allowed_servers(problem, v, p)]  # fmt: skip
        seconds = sum(compute_terms(problem, problem.variants[v], p, s) for v, p in hosted)
        return -len(hosted), seconds

    return sorted(servers, key=merit)[: 2 if len(servers) > 2 else 1]


class _VariantSearch:
    def __init__(self, problem: PlanningProblem, v: int, servers: list[int]) -> None:
        self.problem = problem
        self.v = v
        variant = problem.variants[v]
        self.variant = variant
        self.n = n = len(variant.partitions)
        device = problem.device
        self.weight = weight = energy_weight_s_per_j(problem)
        req = problem.requirements
        self.dims = _Dims(
            latency=req.max_latency_ms > 0,
            drop=req.min_accuracy > 0,
            memory=sum(p.param_bytes for p in variant.partitions) > device.memory_bytes,
        )
        names = list(dict.fromkeys(e.tensor for e in variant.edges))
        self.tensor_names = names
        index = {t: k for k, t in enumerate(names)}
        self.edge_tensor = [index[e.tensor] for e in variant.edges]
        self.into: list[list[int]] = [[] for _ in range(n + 1)]
        last = [-1] * len(names)
        self.producer = [n] * len(names)
        for e, edge in enumerate(variant.edges):
            self.into[edge.dst].append(e)
            t = index[edge.tensor]
            last[t] = max(last[t], edge.dst)
            self.producer[t] = min(self.producer[t], edge.src)
        self.dies: list[list[int]] = [[] for _ in range(n + 1)]
        for t, k in enumerate(last):
            self.dies[k].append(t)
        self.produced: list[list[int]] = [[] for _ in range(n)]
        for t, src in enumerate(self.producer):
            if 0 <= src < n:
                self.produced[src].append(t)
        self.inputs = [t for t, src in enumerate(self.producer) if src < 0]
        # Compute per partition and location: (score, latency).
        power = device.compute_power_w
        self.places: list[list[tuple[int, float, float]]] = []
        for p in range(n):
            options = []
            if device.computes:
                seconds = compute_terms(problem, variant, p, DEVICE)
                options.append((DEVICE, seconds * (1 + weight * power), seconds))
            for s in allowed_servers(problem, v, p):
                if s in servers:
                    seconds = compute_terms(problem, variant, p, s)
                    options.append((s, seconds, seconds))
            self.places.append(options)
        # Transfer per edge, kind and codec: (score, latency).
        self.transfer: list[list[list[tuple[float, float]]]] = []
        for edge in variant.edges:
            per_kind = []
            for src, dst in ((DEVICE, 0), (0, DEVICE), (0, 1)):
                per_codec = []
                for codec in problem.codecs:
                    seconds, tx, rx, dev_codec = transfer_terms(
                        problem, src, dst, edge.nbytes, codec, edge.size_ratio(codec)
                    )
                    joules = (
                        dev_codec * power
                        + tx * device.transmit_power_w
                        + rx * device.transmit_power_w * RECEIVE_POWER_FRACTION
                    )
                    per_codec.append((seconds + weight * joules, seconds))
                per_kind.append(per_codec)
            self.transfer.append(per_kind)
        self.drop = [c.drop(variant.variant) if c.codec.is_lossy else 0.0 for c in problem.codecs]
        self._codec_cache: dict[tuple[int, tuple[tuple[int, int], ...]], list[tuple[int, float, float, float]]] = {}

    # -- pieces -----------------------------------------------------------------------------------------------

    def _key(self, label: _Label) -> tuple[float, ...]:
        key: list[float] = [label[0]]
        if self.dims.latency:
            key.append(label[1])
        if self.dims.drop:
            key.append(label[2])
        if self.dims.memory:
            key.append(label[3])
        return tuple(key)

    def _prune(self, labels: list[_Label]) -> list[_Label]:
        if len(labels) <= 1:
            return labels
        if not (self.dims.latency or self.dims.drop or self.dims.memory):
            return [min(labels, key=lambda label: label[0])]
        labels.sort(key=self._key)
        kept: list[tuple[tuple[float, ...], _Label]] = []
        for label in labels:
            k = self._key(label)
            if not any(all(a <= b for a, b in zip(other, k, strict=True)) for other, _ in kept):
                kept.append((k, label))
        return [label for _, label in kept]

    def _codecs(self, t: int, pattern: tuple[tuple[int, int], ...]) -> list[tuple[int, float, float, float]]:
        """(codec, score, latency, drop) choices worth keeping for tensor ``t`` crossing as ``pattern``."""
        cached = self._codec_cache.get((t, pattern))
        if cached is not None:
            return cached
        options = []
        for m in range(len(self.problem.codecs)):
            score = latency = 0.0
            for e, kind in pattern:
                s, lat = self.transfer[e][kind][m]
                score += s
                latency += lat
            options.append((m, score + ACCURACY_TIEBREAK_S * self.drop[m], latency, self.drop[m]))
        dims = self.dims
        options.sort(key=lambda o: (o[1], o[2], o[3]))
        kept: list[tuple[int, float, float, float]] = []
        for o in options:
            if not any(
                k[1] <= o[1] and (not dims.latency or k[2] <= o[2]) and (not dims.drop or k[3] <= o[3]) for k in kept
            ):
                kept.append(o)
        self._codec_cache[(t, pattern)] = kept
        return kept

    def _resolve(
        self, labels: list[_Label], dying: list[tuple[int, tuple[tuple[int, int], ...]]], k: int, loc: int
    ) -> list[_Label]:
        """Labels after choosing codecs of the tensors that die here."""
        for t, pattern in dying:
            if not pattern:
                continue
            options = self._codecs(t, pattern)
            if len(options) == 1:
                m, s, lat, d = options[0]
                labels = [(a + s, b + lat, c + d, mem, (back, -1, t, m)) for a, b, c, mem, back in labels]
            else:
                labels = [
                    (a + s, b + lat, c + d, mem, (back, -1, t, m))
                    for a, b, c, mem, back in labels
                    for m, s, lat, d in options
                ]
        return labels

    # -- the search ---------------------------------------------------------------------------------------------

    def _transitions(self, phase: int, p: int) -> Iterator[tuple[int, int, float, float]]:
        """(new phase, location, compute score, compute latency) for partition ``p`` after ``phase``."""
        for loc, score, latency in self.places[p]:
            if loc == DEVICE:
                if phase == HEAD_PHASE:
                    yield HEAD_PHASE, DEVICE, score, latency
                else:  # after the server part: the tail
                    yield TAIL_PHASE, DEVICE, score, latency
            elif phase != TAIL_PHASE:
                yield SERVER_PHASE, loc, score, latency

    def best(self, bound: tuple[float, float] | None = None) -> Assignment | None:
        """The best assignment of this variant; with ``bound`` (the violation and objective of a plan found
        already), only one that could beat it (or tie; None if none can)."""
        problem, n = self.problem, self.n
        # Lower bounds on what partitions k.. add: each at its cheapest place, nothing transferred, the
        # smaller of the two per-request overheads.
        rest = [0.0] * (n + 1)
        rest_latency = [0.0] * (n + 1)
        for k in range(n - 1, -1, -1):
            rest[k] = rest[k + 1] + min((score for _, score, _ in self.places[k]), default=0.0)
            rest_latency[k] = rest_latency[k + 1] + min((lat for _, _, lat in self.places[k]), default=0.0)
        overhead = min(request_overhead_s(problem, True), request_overhead_s(problem, False))
        constant = ACCURACY_TIEBREAK_S * (1 - self.variant.accuracy) + overhead
        req = problem.requirements
        budget_s = req.max_latency_ms / 1e3
        floor = req.min_accuracy
        accuracy = self.variant.accuracy
        if bound is not None:
            bound_violation = bound[0] + RANK_TOLERANCE * max(1.0, abs(bound[0]))
            bound_objective = bound[1] + RANK_TOLERANCE * max(1.0, abs(bound[1]))

        def hopeless(label: _Label, p: int) -> bool:
            """The label cannot beat ``bound`` whatever partitions p.. do."""
            violation = 0.0
            if budget_s > 0:
                violation += max(0.0, (label[1] + rest_latency[p] + overhead - budget_s) / budget_s)
            if floor > 0:
                violation += max(0.0, floor - (accuracy - label[2])) * ACCURACY_VIOLATION_WEIGHT
            if violation > bound_violation:
                return True
            could_win_on_violation = violation < bound[0] - RANK_TOLERANCE * max(1.0, abs(bound[0]))  # type: ignore[index]
            return not could_win_on_violation and label[0] + rest[p] + constant > bound_objective

        device = problem.device
        start_phase = HEAD_PHASE if device.computes else SERVER_PHASE
        live0: tuple[_Live, ...] = tuple((t, DEVICE, ()) for t in self.inputs)
        states: dict[tuple[int, tuple[_Live, ...]], list[_Label]] = {(start_phase, live0): [(0.0, 0.0, 0.0, 0, None)]}
        params = [q.param_bytes for q in self.variant.partitions]
        for p in range(n):
            nxt: dict[tuple[int, tuple[_Live, ...]], list[_Label]] = {}
            for (phase, live), labels in states.items():
                for new_phase, loc, score, latency in self._transitions(phase, p):
                    current = {t: (where, pattern) for t, where, pattern in live}
                    for e in self.into[p]:
                        t = self.edge_tensor[e]
                        where, pattern = current[t]
                        kind = _kind(where, loc)
                        if kind is not None:
                            current[t] = (where, (*pattern, (e, kind)))
                    dying = [(t, current.pop(t)[1]) for t in self.dies[p]]
                    for t in self.produced[p]:
                        current[t] = (loc, ())
                    extra = params[p] if loc == DEVICE else 0
                    moved: list[_Label] = [
                        (a + score, b + latency, c, mem + extra, (back, p, loc, -1))
                        for a, b, c, mem, back in labels
                        if mem + extra <= device.memory_bytes
                    ]
                    if not moved:
                        continue
                    moved = self._resolve(moved, dying, p, loc)
                    key = (new_phase, tuple(sorted((t, w, pat) for t, (w, pat) in current.items())))
                    nxt.setdefault(key, []).extend(moved)
            if bound is not None:
                nxt = {
                    key: kept
                    for key, labels in nxt.items()
                    if (kept := [lb for lb in labels if not hopeless(lb, p + 1)])
                }
            states = {key: self._prune(labels) for key, labels in nxt.items()}
        final: list[_Label] = []
        for (phase, live), labels in states.items():
            # The per-request overhead: a plan still in the head phase never used a server.
            overhead = request_overhead_s(problem, phase != HEAD_PHASE)
            if overhead:
                labels = [(a + overhead, b + overhead, c, mem, back) for a, b, c, mem, back in labels]
            dying = []
            for t, where, pattern in live:
                for e in self.into[n]:
                    if self.edge_tensor[e] == t:
                        kind = _kind(where, DEVICE)
                        if kind is not None:
                            pattern = (*pattern, (e, kind))
                dying.append((t, pattern))
            final.extend(self._resolve(list(labels), dying, n, DEVICE))
        if not final:
            return None
        accuracy = self.variant.accuracy

        def rank(label: _Label) -> tuple[float, float]:
            _, violation = violation_of(problem, label[1], accuracy - label[2])
            return violation, label[0]

        best = final[0]
        best_rank = rank(best)
        for label in final[1:]:
            r = rank(label)
            if rank_less(r, best_rank):
                best, best_rank = label, r
        return self._assignment(best)

    def _assignment(self, label: _Label) -> Assignment:
        locations = [DEVICE] * self.n
        codecs: dict[str, int] = {}
        back: object = label[4]
        while back is not None:
            assert isinstance(back, tuple)
            previous, p, loc, m = back
            if p >= 0:
                locations[p] = loc
            else:
                codecs[self.tensor_names[loc]] = m
            back = previous
        return Assignment(self.v, tuple(locations), tuple(sorted(codecs.items())))
