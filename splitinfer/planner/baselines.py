"""The literature's anchors, on the same cost model.

* Neurosurgeon (Kang et al., ASPLOS 2017): scans the cut points of a chain, the device running the layers
  before the cut and one server the rest, with the full model and raw tensors.
* DADS (Hu et al., INFOCOM 2019): a minimum s-t cut of the DAG between two tiers (device, one server), which
  may place any set of partitions on the device.

Both use the most accurate variant, the fastest server and no codec, as in the papers; neither considers
device memory, so a cut the device cannot hold is replaced by the nearest one it can (Neurosurgeon) or by
server-only (DADS).
"""

from __future__ import annotations

from ortools.graph.python import max_flow

from splitinfer.planner.base import allowed_servers, finish, none_codec, require_candidates
from splitinfer.planner.cost import DEVICE, Assignment, Evaluation, better, compute_terms, evaluate, transfer_terms
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["DadsSolver", "NeurosurgeonSolver"]


def _anchor_choice(problem: PlanningProblem) -> tuple[int, int]:
    """(most accurate variant, fastest server that can run all of it) — the baselines' fixed choices."""
    v = max(range(len(problem.variants)), key=lambda k: problem.variants[k].accuracy)
    n = len(problem.variants[v].partitions)
    candidates = set(range(len(problem.servers)))
    for p in range(n):
        candidates &= set(allowed_servers(problem, v, p))
    pool = candidates or set(range(len(problem.servers)))
    server = max(pool, key=lambda s: (problem.servers[s].flops, -s)) if pool else DEVICE
    return v, server


class NeurosurgeonSolver:
    name = "neurosurgeon"

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        v, server = _anchor_choice(problem)
        n = len(problem.variants[v].partitions)
        raw = none_codec(problem)
        best: tuple[Evaluation, Assignment] | None = None
        params = [p.param_bytes for p in problem.variants[v].partitions]
        cuts = [n] if server == DEVICE else range(n + 1)
        for cut in cuts:
            if sum(params[:cut]) > problem.device.memory_bytes:
                break  # the device cannot hold a longer head
            locations = tuple(DEVICE if p < cut else server for p in range(n))
            tensors = {e.tensor for e in problem.variants[v].edges}
            a = Assignment(v, locations, tuple((t, raw) for t in sorted(tensors)))
            ev = evaluate(problem, a)
            if best is None or better(ev, best[0]):
                best = (ev, a)
        assert best is not None
        return finish(problem, best[1], self.name)


class DadsSolver:
    name = "dads"
    _SCALE = 1e9  # capacities in nanoseconds

    def solve(self, problem: PlanningProblem) -> Plan:
        require_candidates(problem)
        v, server = _anchor_choice(problem)
        variant = problem.variants[v]
        n = len(variant.partitions)
        raw_index = none_codec(problem)
        raw = problem.codecs[raw_index]
        tensors = tuple((t, raw_index) for t in sorted({e.tensor for e in variant.edges}))
        if server == DEVICE:
            return finish(problem, Assignment(v, (DEVICE,) * n, tensors), self.name)
        # Nodes: 0 = source (device side), 1 = sink (server side), 2 + p = partition p.
        flow = max_flow.SimpleMaxFlow()

        def cap(seconds: float) -> int:
            return max(0, round(seconds * self._SCALE))

        for p in range(n):
            flow.add_arc_with_capacity(0, 2 + p, cap(compute_terms(problem, variant, p, server)))  # cut: p on server
            flow.add_arc_with_capacity(2 + p, 1, cap(compute_terms(problem, variant, p, DEVICE)))  # cut: p on device
        for edge in variant.edges:
            up = transfer_terms(problem, DEVICE, server, edge.nbytes, raw, edge.size_ratio(raw))[0]
            down = transfer_terms(problem, server, DEVICE, edge.nbytes, raw, edge.size_ratio(raw))[0]
            src = 0 if edge.src < 0 else None if edge.src >= n else 2 + edge.src
            dst = 1 if edge.dst >= n else 2 + edge.dst
            if edge.src < 0:  # model input on the device: pay the uplink if its reader is on the server
                flow.add_arc_with_capacity(0, dst, cap(up))
            elif edge.dst >= n:  # model output to the device: pay the downlink if its writer is on the server
                flow.add_arc_with_capacity(0, 2 + edge.src, cap(down))
            else:
                assert src is not None
                flow.add_arc_with_capacity(src, dst, cap(up))  # device -> server
                flow.add_arc_with_capacity(dst, src, cap(down))  # server -> device
        status = flow.solve(0, 1)
        if status != flow.OPTIMAL:
            raise RuntimeError(f"max-flow failed with status {status}")
        device_side = set(flow.get_source_side_min_cut())
        locations = tuple(DEVICE if 2 + p in device_side else server for p in range(n))
        on_device = sum(variant.partitions[p].param_bytes for p in range(n) if locations[p] == DEVICE)
        if on_device > problem.device.memory_bytes:  # DADS ignores memory; such a cut cannot run
            locations = (server,) * n
        return finish(problem, Assignment(v, locations, tensors), self.name)
