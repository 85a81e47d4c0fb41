"""A fast heuristic: for every consistent cut, the fastest server per partition, then codecs one tensor at a
time, keeping a change only when it lowers the objective."""

from __future__ import annotations

from splitinfer.planner.base import allowed_servers, device_cuts, finish, require_candidates
from splitinfer.planner.cost import DEVICE, Assignment, compute_terms, crossing_tensors, evaluate
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["GreedySolver"]


class GreedySolver:
    name = "greedy"

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        best: tuple[float, Assignment] | None = None
        lossless = [k for k, c in enumerate(problem.codecs) if not c.codec.is_lossy]
        for v, i, j in device_cuts(problem):
            variant = problem.variants[v]
            n = len(variant.partitions)
            locations = [DEVICE] * n
            previous = None
            for p in range(i, j):
                options = allowed_servers(problem, v, p)

                # Fastest server; on a tie stay where the previous partition ran (no transfer).
                costs = {s: (compute_terms(problem, variant, p, s), s != previous) for s in options}
                locations[p] = min(options, key=costs.__getitem__)
                previous = locations[p]
            names = crossing_tensors(variant, tuple(locations))
            codes = {t: lossless[0] if lossless else 0 for t in names}
            current = evaluate(problem, Assignment(v, tuple(locations), tuple(codes.items()))).objective
            for tensor in names:
                for k in range(len(problem.codecs)):
                    trial = {**codes, tensor: k}
                    objective = evaluate(problem, Assignment(v, tuple(locations), tuple(trial.items()))).objective
                    if objective < current - 1e-12:
                        codes, current = trial, objective
            if best is None or current < best[0] - 1e-12:
                best = (current, Assignment(v, tuple(locations), tuple(codes.items())))
        assert best is not None
        return finish(problem, best[1], self.name)
