"""A fast heuristic: the best consistent cut with the fastest server per partition and a lossless codec,
then codecs improved one tensor at a time, keeping a change only when it lowers the objective."""

from __future__ import annotations

from splitinfer.planner.base import allowed_servers, device_cuts, finish, require_candidates
from splitinfer.planner.cost import DEVICE, Assignment, Evaluation, better, compute_terms, crossing_tensors, evaluate
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["GreedySolver"]


class GreedySolver:
    name = "greedy"

    def __init__(self, servers: list[int] | None = None) -> None:
        #: Servers to consider (all when None).
        self.servers = servers

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        best = self.assignment(problem)
        assert best is not None  # a device-only cut always exists when a variant fits the device
        return finish(problem, best, self.name)

    def assignment(self, problem: PlanningProblem, variants: list[int] | None = None) -> Assignment | None:
        """The greedy choice among ``variants`` (all when None); None when none can run."""
        lossless = next((k for k, c in enumerate(problem.codecs) if not c.codec.is_lossy), 0)
        best: tuple[Evaluation, Assignment] | None = None
        for v, i, j in device_cuts(problem):
            if variants is not None and v not in variants:
                continue
            variant = problem.variants[v]
            locations = [DEVICE] * len(variant.partitions)
            previous: int | None = None
            feasible = True
            for p in range(i, j):
                options = [s for s in allowed_servers(problem, v, p) if self.servers is None or s in self.servers]
                if not options:
                    feasible = False
                    break
                # Fastest server; on a tie stay where the previous partition ran (no transfer).
                costs = {s: (compute_terms(problem, variant, p, s), s != previous) for s in options}
                locations[p] = previous = min(options, key=costs.__getitem__)
            if not feasible:
                continue
            names = crossing_tensors(variant, tuple(locations))
            a = Assignment(v, tuple(locations), tuple((t, lossless) for t in names))
            ev = evaluate(problem, a)
            if best is None or better(ev, best[0]):
                best = (ev, a)
        if best is None:
            return None
        current, a = best
        codes = dict(a.codecs)
        for tensor in list(codes):
            for k in range(len(problem.codecs)):
                trial = {**codes, tensor: k}
                ev = evaluate(problem, Assignment(a.variant, a.locations, tuple(trial.items())))
                if better(ev, current):
                    codes, current = trial, ev
        return Assignment(a.variant, a.locations, tuple(codes.items()))
