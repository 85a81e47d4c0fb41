"""The exact planner: one CP-SAT model over variant, device cut, server per partition and codec per tensor.

Decision variables (all Boolean), for each variant ``v`` and partition ``p``:

* ``u[v]``: the variant is used (exactly one).
* ``head[v,p]`` / ``tail[v,p]``: ``p`` runs on the device as part of the head / the tail. Heads are
  prefixes (``head[p] >= head[p+1]``) and tails suffixes (``tail[p] <= tail[p+1]``) of the topological
  order, so every solution is a consistent cut of the DAG; ``dev = head + tail`` and ``srv = u - dev``.
* ``x[v,p,s]``: ``p`` runs on server ``s`` (only servers that host it); ``sum_s x = srv``.
* ``c[v,t,m]``: tensor ``t`` crosses with codec ``m`` (exactly one per tensor).

For each edge, "up" (device to server), "down" and "both on servers" are products of two of the above;
"across" (two different servers) is "both" minus ``sum_s x[a,s] AND x[b,s]``. Transfer costs are gated by
the codec chosen for the tensor. The objective is the cost model of :mod:`splitinfer.planner.cost` term for
term, in integer microseconds (microjoules for energy), with the requirements as soft constraints weighted
so that any feasible plan beats any infeasible one. The model has O(V*(n*S + E*M)) variables, not one per
(head, tail) pair, and servers that another server dominates (as fast or faster, no longer queue, hosting
at least as much) are dropped first, which keeps solving exact and fast. The greedy plan is given as a hint.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ortools.sat.python import cp_model

from splitinfer.planner.base import allowed_servers, finish, require_candidates, undominated_servers
from splitinfer.planner.cost import (
    ACCURACY_TIEBREAK_S,
    ACCURACY_VIOLATION_WEIGHT,
    DEVICE,
    RECEIVE_POWER_FRACTION,
    Assignment,
    Evaluation,
    better,
    compute_terms,
    crossing_tensors,
    energy_weight_s_per_j,
    evaluate,
    request_overhead_s,
    transfer_terms,
)
from splitinfer.planner.greedy import GreedySolver
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["CpSatSolver", "undominated_servers"]

#: Integer units per unit of accuracy in the requirement constraints.
ACCURACY_UNITS = 1_000_000
Literal = cp_model.IntVar | int


class CpSatSolver:
    name = "cp-sat"

    def __init__(self, time_limit_s: float = 2.0, workers: int = 1, hint: bool = True) -> None:
        self.time_limit_s = time_limit_s
        self.workers = workers
        self.hint = hint

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        servers = undominated_servers(problem)
        greedy = GreedySolver(servers=servers)
        # Most promising variant first (by its greedy plan); each later variant must beat the incumbent,
        # which CP-SAT usually refutes at once. Exactly one variant is used, so this is still exact.
        order = []
        for v in range(len(problem.variants)):
            start = greedy.assignment(problem, variants=[v])
            rank = (evaluate(problem, start).violation, evaluate(problem, start).objective) if start else (1e300, 0.0)
            order.append((rank, v, start))
        order.sort(key=lambda item: item[0])
        best: tuple[Evaluation, Assignment, bool] | None = None
        # Lexicographic: first every variant with the requirements as hard constraints (conservatively
        # rounded, so a plan CP-SAT accepts meets them); only when none can, minimise the violation.
        for mode in ("feasible", "violation"):
            for _, v, start in order:
                bound = None if best is None else best[0].objective
                found = self._solve_variant(problem, v, servers, start, mode, bound)
                if found is None:
                    continue
                ev = evaluate(problem, found[0])
                if best is None or better(ev, best[0]):
                    best = (ev, found[0], found[1])
            if best is not None:
                break
        if best is None:
            raise RuntimeError("CP-SAT found no plan: no variant fits the device or its servers")
        _, assignment, optimal = best
        return finish(problem, assignment, self.name if optimal else f"{self.name} (time limit, best found)")

    def _solve_variant(
        self,
        problem: PlanningProblem,
        only: int,
        servers: list[int],
        start: Assignment | None,
        mode: str,
        bound: float | None,
    ) -> tuple[Assignment, bool] | None:
        """The best plan using variant ``only``, or None. ``mode`` "feasible": meeting the requirements
        (None when none does), with an objective below ``bound`` (seconds) up to the rounding bound;
        "violation": the least violation, then the least objective."""
        model = cp_model.CpModel()
        device = problem.device
        weight = energy_weight_s_per_j(problem)
        latency_terms: list[tuple[float, Literal]] = []
        energy_terms: list[tuple[float, Literal]] = []
        accuracy_terms: list[tuple[float, Literal]] = []

        def both(a: Literal, b: Literal, name: str) -> Literal:
            """A literal equal to ``a AND b``."""
            if isinstance(a, int) or isinstance(b, int):
                if (isinstance(a, int) and a == 0) or (isinstance(b, int) and b == 0):
                    return 0
                return b if isinstance(a, int) else a
            if a is b:
                return a
            var = model.new_bool_var(name)
            model.add_bool_and([a, b]).only_enforce_if(var)
            model.add_bool_or([a.Not(), b.Not(), var])
            return var

        u: list[Literal] = [1 if v == only else 0 for v in range(len(problem.variants))]
        head: dict[tuple[int, int], cp_model.IntVar] = {}
        tail: dict[tuple[int, int], cp_model.IntVar] = {}
        srv: dict[tuple[int, int], cp_model.IntVar] = {}
        dev: dict[tuple[int, int], cp_model.IntVar] = {}
        x: dict[tuple[int, int, int], cp_model.IntVar] = {}
        c: dict[tuple[int, str, int], cp_model.IntVar] = {}
        for v, variant in enumerate(problem.variants):
            if v != only:
                continue
            n = len(variant.partitions)
            accuracy_terms.append((variant.accuracy, u[v]))
            device_bytes = []
            for p in range(n):
                head[(v, p)] = model.new_bool_var(f"head{v},{p}")
                tail[(v, p)] = model.new_bool_var(f"tail{v},{p}")
                dev[(v, p)] = model.new_bool_var(f"dev{v},{p}")
                srv[(v, p)] = model.new_bool_var(f"srv{v},{p}")
                model.add(dev[(v, p)] == head[(v, p)] + tail[(v, p)])
                model.add(dev[(v, p)] + srv[(v, p)] == 1)
                if p > 0:
                    model.add(head[(v, p - 1)] >= head[(v, p)])
                    model.add(tail[(v, p - 1)] <= tail[(v, p)])
                device_bytes.append((variant.partitions[p].param_bytes, dev[(v, p)]))
                if not device.computes:
                    model.add(dev[(v, p)] == 0)
                device_s = compute_terms(problem, variant, p, DEVICE)
                latency_terms.append((device_s, dev[(v, p)]))
                energy_terms.append((device_s * device.compute_power_w, dev[(v, p)]))
                options = [s for s in allowed_servers(problem, v, p) if s in servers]
                for s in options:
                    x[(v, p, s)] = model.new_bool_var(f"x{v},{p},{s}")
                    latency_terms.append((compute_terms(problem, variant, p, s), x[(v, p, s)]))
                model.add(sum(x[(v, p, s)] for s in options) == srv[(v, p)])
            model.add(sum(k * var for k, var in device_bytes) <= device.memory_bytes)
            offload_s, local_s = request_overhead_s(problem, True), request_overhead_s(problem, False)
            if offload_s or local_s:  # the per-request overhead: one value if any server is used, another if none
                offloaded = model.new_bool_var(f"offloaded{v}")
                model.add_max_equality(offloaded, [srv[(v, p)] for p in range(n)])
                latency_terms.append((local_s, 1))
                latency_terms.append((offload_s - local_s, offloaded))

            for t in dict.fromkeys(e.tensor for e in variant.edges):
                for m in range(len(problem.codecs)):
                    c[(v, t, m)] = model.new_bool_var(f"c{v},{t},{m}")
                model.add_exactly_one(c[(v, t, m)] for m in range(len(problem.codecs)))

            def on_device(p: int, v: int = v, n: int = n) -> Literal:
                return u[v] if p < 0 or p >= n else dev[(v, p)]

            def on_server(p: int, v: int = v, n: int = n) -> Literal:
                return 0 if p < 0 or p >= n else srv[(v, p)]

            crossing_of: dict[str, list[Literal]] = defaultdict(list)
            for e_index, edge in enumerate(variant.edges):
                a, b = edge.src, edge.dst
                categories: list[tuple[Literal, int, int]] = [
                    (both(on_device(a), on_server(b), f"up{v},{e_index}"), DEVICE, 0),
                    (both(on_server(a), on_device(b), f"down{v},{e_index}"), 0, DEVICE),
                ]
                servers_both = both(on_server(a), on_server(b), f"ss{v},{e_index}")
                if not isinstance(servers_both, int) and len(servers) > 1:
                    same = [
                        both(x[(v, a, s)], x[(v, b, s)], f"w{v},{e_index},{s}")
                        for s in servers
                        if (v, a, s) in x and (v, b, s) in x
                    ]
                    across = model.new_bool_var(f"across{v},{e_index}")
                    model.add(across == servers_both - sum(same))
                    categories.append((across, 0, 1))
                for flag, src, dst in categories:
                    if isinstance(flag, int) and flag == 0:
                        continue
                    crossing_of[edge.tensor].append(flag)
                    for m, codec in enumerate(problem.codecs):
                        seconds, tx, rx, dev_codec = transfer_terms(
                            problem, src, dst, edge.nbytes, codec, edge.size_ratio(codec)
                        )
                        g = both(flag, c[(v, edge.tensor, m)], f"g{v},{e_index},{src},{dst},{m}")
                        latency_terms.append((seconds, g))
                        joules = (
                            dev_codec * device.compute_power_w
                            + tx * device.transmit_power_w
                            + rx * device.transmit_power_w * RECEIVE_POWER_FRACTION
                        )
                        energy_terms.append((joules, g))
            for t, flags in crossing_of.items():
                drops = [
                    (m, codec.drop(variant.variant))
                    for m, codec in enumerate(problem.codecs)
                    if codec.codec.is_lossy and codec.drop(variant.variant)
                ]
                if not drops:
                    continue
                crosses = model.new_bool_var(f"cross{v},{t}")
                model.add_max_equality(crosses, flags)
                for m, drop in drops:
                    accuracy_terms.append((-drop, both(crosses, c[(v, t, m)], f"h{v},{t},{m}")))

        # Per-instance scale: integer units per second chosen so that the largest possible objective stays
        # far inside int64 (no overflow whatever the budget), at most 1 ns resolution. Each objective
        # coefficient is rounded to the nearest unit, so a plan's objective is off by at most (terms in it)
        # / 2 units: CP-SAT's optimum is within ``len(terms) / scale`` seconds of the true one (the
        # candidates are scored again exactly by evaluate()). Requirement constraints round
        # conservatively (latency up, accuracy down): a plan CP-SAT accepts meets them; a plan within
        # that bound of a limit may be rejected.
        coefficient: dict[int, float] = defaultdict(float)
        variables: dict[int, cp_model.IntVar] = {}
        offset = ACCURACY_TIEBREAK_S
        for factor, terms in ((1.0, latency_terms), (weight, energy_terms), (-ACCURACY_TIEBREAK_S, accuracy_terms)):
            for k, var in terms:
                if isinstance(var, int):
                    offset += factor * k * var
                    continue
                coefficient[var.index] += factor * k
                variables[var.index] = var
        largest = abs(offset) + sum(abs(k) for k in coefficient.values()) + 1e-9
        scale = min(1e9, 2.0**50 / largest)
        latency_max = sum(max(0.0, k) for k, _ in latency_terms)
        req = problem.requirements
        lat_hi = sum(math.ceil(k * scale) * var for k, var in latency_terms)
        acc_lo = sum(math.floor(k * ACCURACY_UNITS) * var for k, var in accuracy_terms)
        budget = math.floor(req.max_latency_ms / 1e3 * scale) if req.max_latency_ms > 0 else None
        floor = math.ceil(req.min_accuracy * ACCURACY_UNITS) if req.min_accuracy > 0 else None
        objective = cp_model.LinearExpr.weighted_sum(
            [variables[k] for k in coefficient], [round(coefficient[k] * scale) for k in coefficient]
        ) + round(offset * scale)
        if mode == "feasible":
            if budget is not None:
                model.add(lat_hi <= budget)
            if floor is not None:
                model.add(acc_lo >= floor)
            if bound is not None:
                model.add(objective <= round(bound * scale) + len(coefficient))
            model.minimize(objective)
        else:
            violation: list[tuple[int, cp_model.IntVar]] = []
            if budget is not None:
                excess = model.new_int_var(0, math.ceil(latency_max * scale) + len(latency_terms), "latency_excess")
                model.add(excess >= lat_hi - budget)
                violation.append((1, excess))  # in budget units x budget
            if floor is not None:
                short = model.new_int_var(0, ACCURACY_UNITS, "accuracy_short")
                model.add(short >= floor - acc_lo)
                per_budget = max(budget or 1, 1) * ACCURACY_VIOLATION_WEIGHT / ACCURACY_UNITS
                violation.append((max(1, round(per_budget)), short))
            if not violation:
                return None  # nothing to violate: the feasible pass found every plan there is
            total = sum(k * var for k, var in violation)
            model.minimize(total)
            first = self._run(model, start, head, tail, x, servers)
            if first is None:
                return None
            model.add(total <= round(first[0].objective_value))
            model.minimize(objective)
        result = self._run(model, start, head, tail, x, servers)
        if result is None:
            return None  # cannot meet the requirements or beat the bound (or the variant fits nowhere)
        solver, optimal = result
        v = only
        variant = problem.variants[v]
        n = len(variant.partitions)
        locations = tuple(
            DEVICE
            if solver.boolean_value(dev[(v, p)])
            else next(s for s in servers if (v, p, s) in x and solver.boolean_value(x[(v, p, s)]))
            for p in range(n)
        )
        names = crossing_tensors(variant, locations)
        codecs = tuple(
            (t, next(m for m in range(len(problem.codecs)) if solver.boolean_value(c[(v, t, m)]))) for t in names
        )
        return Assignment(v, locations, codecs), optimal

    def _run(
        self,
        model: cp_model.CpModel,
        start: Assignment | None,
        head: dict[tuple[int, int], cp_model.IntVar],
        tail: dict[tuple[int, int], cp_model.IntVar],
        x: dict[tuple[int, int, int], cp_model.IntVar],
        servers: list[int],
    ) -> tuple[cp_model.CpSolver, bool] | None:
        """The solved model and whether it is proven optimal; None when it has no solution."""
        model.clear_hints()
        if self.hint and start is not None:
            self._add_hint(model, start, head, tail, x, servers)
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = self.time_limit_s
        solver.parameters.num_workers = self.workers
        solver.parameters.cp_model_probing_level = 0  # measured faster on these models, still exact
        status = solver.solve(model)
        if status == cp_model.MODEL_INVALID:
            raise RuntimeError(f"CP-SAT model invalid: {model.validate()}")
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        return solver, status == cp_model.OPTIMAL

    @staticmethod
    def _add_hint(
        model: cp_model.CpModel,
        start: Assignment,
        head: dict[tuple[int, int], cp_model.IntVar],
        tail: dict[tuple[int, int], cp_model.IntVar],
        x: dict[tuple[int, int, int], cp_model.IntVar],
        servers: list[int],
    ) -> None:
        """Starts the search from the greedy plan (a hint only: it never changes the optimum)."""
        v, locations = start.variant, start.locations
        n = len(locations)
        first_server = next((p for p in range(n) if locations[p] != DEVICE), n)
        for p in range(n):
            model.add_hint(head[(v, p)], locations[p] == DEVICE and p < first_server)
            model.add_hint(tail[(v, p)], locations[p] == DEVICE and p >= first_server)
            for s in servers:
                if (v, p, s) in x:
                    model.add_hint(x[(v, p, s)], locations[p] == s)
