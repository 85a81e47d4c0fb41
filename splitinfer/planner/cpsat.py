"""The exact planner: one CP-SAT model over variant, device cut, server per partition and codec per tensor.

Decision variables (all Boolean):

* ``y[v,i,j]``: variant ``v`` with the device running partitions ``[0, i)`` and ``[j, n)``; exactly one is
  true, which also chooses the variant.
* ``x[v,p,s]``: partition ``p`` of variant ``v`` runs on server ``s`` (only servers that host it); one per
  server partition of the chosen cut, none otherwise.
* ``c[v,t,m]``: tensor ``t`` crosses with codec ``m``; one per tensor.

Whether each edge stays in place, goes up, down, or between two servers is linear in ``y`` except for
"between two different servers", which uses ``w[e,s] = x[a,s] AND x[b,s]``. The objective is the cost model
of :mod:`splitinfer.planner.cost` term for term, in integer microseconds (microjoules for energy), with the
requirements as soft constraints weighted so that any feasible plan beats any infeasible one; the chosen
assignment is then scored again by :func:`~splitinfer.planner.cost.evaluate`.
"""

from __future__ import annotations

from collections import defaultdict

from ortools.sat.python import cp_model

from splitinfer.planner.base import allowed_servers, device_cuts, finish, require_candidates
from splitinfer.planner.cost import (
    ACCURACY_TIEBREAK_S,
    DEVICE,
    RECEIVE_POWER_FRACTION,
    VIOLATION_WEIGHT_S,
    Assignment,
    compute_terms,
    crossing_tensors,
    energy_weight_s_per_j,
    transfer_terms,
)
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["CpSatSolver"]

US = 1_000_000  # integer units per second (and per joule, per unit of accuracy)
Cut = tuple[int, int, int]  # (variant, head_end, tail_start)


def _i(value: float) -> int:
    return round(value * US)


class CpSatSolver:
    name = "cp-sat"

    def __init__(self, time_limit_s: float = 5.0, workers: int = 1) -> None:
        self.time_limit_s = time_limit_s
        self.workers = workers

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        model = cp_model.CpModel()
        cuts = list(device_cuts(problem))
        y = {cut: model.new_bool_var(f"y{cut}") for cut in cuts}
        model.add_exactly_one(y.values())
        weight = energy_weight_s_per_j(problem)
        device = problem.device
        latency_terms: list[tuple[int, cp_model.IntVar]] = []
        energy_terms: list[tuple[int, cp_model.IntVar]] = []
        accuracy_terms: list[tuple[int, cp_model.IntVar]] = []
        x: dict[tuple[int, int, int], cp_model.IntVar] = {}
        c: dict[tuple[int, str, int], cp_model.IntVar] = {}
        cuts_of: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for cut in cuts:
            cuts_of[cut[0]].append(cut)

        for v, variant in enumerate(problem.variants):
            n = len(variant.partitions)
            my_cuts = cuts_of.get(v, [])
            if not my_cuts:
                continue
            accuracy_terms.extend((_i(variant.accuracy), y[cut]) for cut in my_cuts)

            def on_device(p: int, my_cuts: list[Cut] = my_cuts, n: int = n) -> list[cp_model.IntVar]:
                """The y of cuts that put partition p (or the model input/output) on the device."""
                return [y[(vv, i, j)] for vv, i, j in my_cuts if p < 0 or p >= n or p < i or p >= j]

            def on_server(p: int, my_cuts: list[Cut] = my_cuts, n: int = n) -> list[cp_model.IntVar]:
                return [y[(vv, i, j)] for vv, i, j in my_cuts if 0 <= p < n and i <= p < j]

            # Compute.
            for p in range(n):
                device_s = compute_terms(problem, variant, p, DEVICE)
                for var in on_device(p):
                    latency_terms.append((_i(device_s), var))
                    energy_terms.append((_i(device_s * device.compute_power_w), var))
                servers = allowed_servers(problem, v, p)
                for s in servers:
                    x[(v, p, s)] = model.new_bool_var(f"x{v},{p},{s}")
                    latency_terms.append((_i(compute_terms(problem, variant, p, s)), x[(v, p, s)]))
                model.add(sum(x[(v, p, s)] for s in servers) == sum(on_server(p)))

            # Codec per tensor.
            tensors = list(dict.fromkeys(e.tensor for e in variant.edges))
            for t in tensors:
                for m in range(len(problem.codecs)):
                    c[(v, t, m)] = model.new_bool_var(f"c{v},{t},{m}")
                model.add_exactly_one(c[(v, t, m)] for m in range(len(problem.codecs)))

            # Edges: up (device -> server), down (server -> device), across (server -> other server).
            crossing_of: dict[str, list[cp_model.IntVar]] = defaultdict(list)
            for e_index, edge in enumerate(variant.edges):
                a, b = edge.src, edge.dst
                up = [y[cut] for cut in my_cuts if _dev(a, cut, n) and not _dev(b, cut, n)]
                down = [y[cut] for cut in my_cuts if not _dev(a, cut, n) and _dev(b, cut, n)]
                both = [y[cut] for cut in my_cuts if not _dev(a, cut, n) and not _dev(b, cut, n)]
                categories: list[tuple[str, cp_model.IntVar, int, int]] = []
                if up:
                    flag = model.new_bool_var(f"up{v},{e_index}")
                    model.add(flag == sum(up))
                    categories.append(("up", flag, DEVICE, 0))
                if down:
                    flag = model.new_bool_var(f"down{v},{e_index}")
                    model.add(flag == sum(down))
                    categories.append(("down", flag, 0, DEVICE))
                if both and len(problem.servers) > 1:
                    same = []
                    for s in range(len(problem.servers)):
                        if (v, a, s) in x and (v, b, s) in x:
                            w = model.new_bool_var(f"w{v},{e_index},{s}")
                            model.add_bool_and([x[(v, a, s)], x[(v, b, s)]]).only_enforce_if(w)
                            model.add_bool_or([x[(v, a, s)].Not(), x[(v, b, s)].Not(), w])
                            same.append(w)
                    flag = model.new_bool_var(f"across{v},{e_index}")
                    model.add(flag == sum(both) - sum(same))
                    categories.append(("across", flag, 0, 1))
                for _, flag, src, dst in categories:
                    crossing_of[edge.tensor].append(flag)
                    for m, codec in enumerate(problem.codecs):
                        seconds, tx, rx, dev_codec = transfer_terms(problem, src, dst, edge.nbytes, codec)
                        g = model.new_bool_var(f"g{v},{e_index},{src},{dst},{m}")
                        model.add_bool_and([flag, c[(v, edge.tensor, m)]]).only_enforce_if(g)
                        model.add_bool_or([flag.Not(), c[(v, edge.tensor, m)].Not(), g])
                        latency_terms.append((_i(seconds), g))
                        joules = (
                            dev_codec * device.compute_power_w
                            + tx * device.transmit_power_w
                            + rx * device.transmit_power_w * RECEIVE_POWER_FRACTION
                        )
                        energy_terms.append((_i(joules), g))
            # Accuracy lost to lossy codecs, once per tensor that crosses at all.
            for t, flags in crossing_of.items():
                crosses = model.new_bool_var(f"cross{v},{t}")
                model.add_max_equality(crosses, flags)
                for m, codec in enumerate(problem.codecs):
                    drop = codec.drop(variant.variant) if codec.codec.is_lossy else 0.0
                    if drop:
                        h = model.new_bool_var(f"h{v},{t},{m}")
                        model.add_bool_and([crosses, c[(v, t, m)]]).only_enforce_if(h)
                        model.add_bool_or([crosses.Not(), c[(v, t, m)].Not(), h])
                        accuracy_terms.append((-_i(drop), h))

        # The objective in microsecond units, one coefficient per variable, rounded once.
        coefficient: dict[int, float] = defaultdict(float)
        variables: dict[int, cp_model.IntVar] = {}
        for factor, terms in ((1.0, latency_terms), (weight, energy_terms), (-ACCURACY_TIEBREAK_S, accuracy_terms)):
            for k, var in terms:
                coefficient[var.index] += factor * k
                variables[var.index] = var
        latency = sum(k * var for k, var in latency_terms)
        accuracy = sum(k * var for k, var in accuracy_terms)
        req = problem.requirements
        latency_bound = sum(max(0, k) for k, _ in latency_terms)  # keeps the objective within int64
        if req.max_latency_ms > 0:
            excess = model.new_int_var(0, max(0, latency_bound), "latency_excess")
            model.add(excess >= latency - _i(req.max_latency_ms / 1e3))
            coefficient[excess.index] += VIOLATION_WEIGHT_S * US / _i(req.max_latency_ms / 1e3)
            variables[excess.index] = excess
        if req.min_accuracy > 0:
            short = model.new_int_var(0, US, "accuracy_short")
            model.add(short >= _i(req.min_accuracy) - accuracy)
            coefficient[short.index] += VIOLATION_WEIGHT_S * 10
            variables[short.index] = short
        objective = cp_model.LinearExpr.weighted_sum(
            [variables[k] for k in coefficient], [round(coefficient[k]) for k in coefficient]
        )
        model.minimize(objective)
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = self.time_limit_s
        solver.parameters.num_workers = self.workers
        status = solver.solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            raise RuntimeError(f"CP-SAT found no solution: {solver.status_name(status)}")
        v, i, j = next(cut for cut, var in y.items() if solver.boolean_value(var))
        variant = problem.variants[v]
        n = len(variant.partitions)
        locations = [DEVICE] * n
        for p in range(i, j):
            locations[p] = next(s for s in allowed_servers(problem, v, p) if solver.boolean_value(x[(v, p, s)]))
        names = crossing_tensors(variant, tuple(locations))
        codecs = tuple(
            (t, next(m for m in range(len(problem.codecs)) if solver.boolean_value(c[(v, t, m)]))) for t in names
        )
        label = self.name if status == cp_model.OPTIMAL else f"{self.name} (time limit, best found)"
        return finish(problem, Assignment(v, tuple(locations), codecs), label)


def _dev(p: int, cut: tuple[int, int, int], n: int) -> bool:
    _, i, j = cut
    return p < 0 or p >= n or p < i or p >= j
