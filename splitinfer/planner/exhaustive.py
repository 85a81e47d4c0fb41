"""The exhaustive enumerator: every variant, consistent cut, server per partition and codec per crossing
tensor. Exponential; the test oracle for small instances."""

from __future__ import annotations

import itertools

from splitinfer.planner.base import allowed_servers, device_cuts, finish, require_candidates
from splitinfer.planner.cost import DEVICE, Assignment, Evaluation, better, crossing_tensors, evaluate
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["ExhaustiveSolver"]


class ExhaustiveSolver:
    name = "exhaustive"

    def __init__(self, max_candidates: int = 2_000_000) -> None:
        self.max_candidates = max_candidates

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        best: tuple[Evaluation, Assignment] | None = None
        seen = 0
        for v, i, j in device_cuts(problem):
            variant = problem.variants[v]
            n = len(variant.partitions)
            choices = [allowed_servers(problem, v, p) for p in range(i, j)]
            for servers in itertools.product(*choices):
                locations = [DEVICE] * n
                locations[i:j] = servers
                names = crossing_tensors(variant, tuple(locations))
                for codes in itertools.product(range(len(problem.codecs)), repeat=len(names)):
                    seen += 1
                    if seen > self.max_candidates:
                        raise ValueError(f"more than {self.max_candidates} candidates: instance too large")
                    a = Assignment(v, tuple(locations), tuple(zip(names, codes, strict=True)))
                    ev = evaluate(problem, a)
                    if best is None or better(ev, best[0]):
                        best = (ev, a)
        assert best is not None  # device-only always qualifies unless no variant fits the device
        return finish(problem, best[1], self.name)
