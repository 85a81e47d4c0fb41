"""What every solver shares: the interface, the space of consistent cuts, and turning a choice into a Plan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from splitinfer.errors import FailedPrecondition, Unavailable
from splitinfer.planner.cost import DEVICE, Assignment, Evaluation, compute_terms, energy_weight_s_per_j, evaluate
from splitinfer.planner.plan import Plan, make_plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["Solver", "allowed_servers", "device_cuts", "finish", "none_codec", "undominated_servers"]


class Solver(Protocol):
    name: str

    def solve(self, problem: PlanningProblem) -> Plan:
        """The best plan this solver finds. Never raises for unmet requirements: the plan names them."""
        ...


def allowed_servers(problem: PlanningProblem, variant: int, partition: int) -> list[int]:
    v = problem.variants[variant]
    name = v.partitions[partition].name
    return [s for s, server in enumerate(problem.servers) if server.can_run(v.model, v.variant, name)]


def undominated_servers(problem: PlanningProblem) -> list[int]:
    """Servers no other server dominates. Transfers cost the same between any two servers, so a server
    that another can replace everywhere (it runs every partition the first runs, each at least as fast,
    queue and calibration included) is never needed in an optimal plan: moving its partitions there keeps
    every cost or lowers it. Ties keep the lower index."""
    times: list[dict[tuple[int, int], float]] = []
    for s in range(len(problem.servers)):
        table = {}
        for v, variant in enumerate(problem.variants):
            for p, part in enumerate(variant.partitions):
                if problem.servers[s].can_run(variant.model, variant.variant, part.name):
                    table[(v, p)] = compute_terms(problem, variant, p, s)
        times.append(table)
    keep = []
    for s, mine in enumerate(times):
        dominated = False
        for t, theirs in enumerate(times):
            if t == s or not all(k in theirs and theirs[k] <= value for k, value in mine.items()):
                continue
            strictly = len(theirs) > len(mine) or any(theirs[k] < value for k, value in mine.items())
            if strictly or t < s:
                dominated = True
                break
        if not dominated:
            keep.append(s)
    return keep


def device_cuts(problem: PlanningProblem) -> Iterator[tuple[int, int, int]]:
    """(variant, head_end, tail_start) for every consistent cut the device can hold and servers can serve:
    the device runs partitions [0, head_end) and [tail_start, n)."""
    for v, variant in enumerate(problem.variants):
        n = len(variant.partitions)
        servable = [bool(allowed_servers(problem, v, p)) for p in range(n)]
        for i in range(n + 1) if problem.device.computes else (0,):
            for j in range(i, n + 1) if problem.device.computes else (n,):
                if not all(servable[i:j]):
                    continue
                device_bytes = sum(p.param_bytes for k, p in enumerate(variant.partitions) if k < i or k >= j)
                if device_bytes <= problem.device.memory_bytes:
                    yield v, i, j


def none_codec(problem: PlanningProblem) -> int:
    """Index of the plain codec (no lossy step, no compression), the baselines' only choice."""
    for index, profile in enumerate(problem.codecs):
        if str(profile.codec) == "none":
            return index
    return 0


def _reason(problem: PlanningProblem, ev: Evaluation, a: Assignment) -> str:
    variant = problem.variants[a.variant]
    n = len(variant.partitions)
    on_device = sum(1 for p in range(n) if a.location(p, n) == DEVICE)
    where = (
        "all on the device"
        if on_device == n
        else "all on servers"
        if on_device == 0
        else (f"{on_device} of {n} partitions on the device")
    )
    weight = energy_weight_s_per_j(problem)
    balance = f"energy weighted {weight:.2f} s/J" if weight else "latency only"
    if ev.violated:
        return f"best available, {where}, but violates {', '.join(ev.violated)} ({balance})"
    return f"{where}; {ev.latency_s * 1e3:.1f} ms within requirements ({balance})"


def finish(problem: PlanningProblem, a: Assignment, solver: str) -> Plan:
    ev = evaluate(problem, a)
    return make_plan(problem, a, ev, solver, _reason(problem, ev, a))


def require_candidates(problem: PlanningProblem) -> None:
    if not problem.variants:
        raise FailedPrecondition("no variant of the model is available to plan with")
    if not problem.device.computes and not any(True for _ in device_cuts(problem)):
        raise Unavailable("the device runs no partition and no variant is wholly served by live servers")
