"""Dividing a model graph by capacity, and choosing device heads per device class.

Method: exact dynamic programming over the narrow cuts of the graph's topological order (see
:func:`splitinfer.graph.narrow_cuts`). Because any contiguous segmentation of a topological order is a
valid partition DAG, a division is a choice of cut positions plus a server per segment, with servers used
in the given order (the pipeline order: edge first, cloud last). The DP is exact for that search space and
runs in O(C^2 * S) for C candidate cuts and S servers (about 10^5 steps for 170 ops and 8 servers), so no
solver is needed here; CP-SAT is kept for the Planner, whose choices (variant x codec x replica) do not
have this structure.

Objective: the bottleneck stage time (compute on the stage's server plus sending its outputs over the link),
which is what load balance and pipeline throughput depend on; ties go to the smaller total time. Memory: a
segment must fit its server (parameters, plus the largest set of live activations inside it, plus the
largest single output being produced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from splitinfer.divider.capacity import DeviceClass, ServerCapacity
from splitinfer.divider.division import Division, partition_at
from splitinfer.errors import FailedPrecondition, InvalidArgument
from splitinfer.graph import CutPoint, ModelGraph, cut_points, narrow_cuts

__all__ = ["DivideOptions", "active_head_cuts", "device_head", "divide"]


@dataclass(frozen=True, slots=True)
class DivideOptions:
    #: Bandwidth between consecutive servers, megabits per second.
    link_mbps: float = 1000.0
    #: Cuts with at most this many crossing tensors are candidates; None searches 1..max_live_limit for the
    #: smallest number that gives the partitions the servers need (an attention mask or a position bias
    #: stays live across every transformer layer, so transformers need 2 to 4).
    max_live_tensors: int | None = None
    #: Upper bound of that search.
    max_live_limit: int = 8
    #: Device classes with at least this share of recent requests get their head cut as a boundary.
    min_request_share: float = 0.1


def _segment_costs(graph: ModelGraph, cuts: list[CutPoint]) -> tuple[list[int], list[list[int]]]:
    """Prefix FLOPs per node, and memory per candidate segment [i, j) of cut indexes."""
    n = len(graph.nodes)
    prefix = [0] * (n + 1)
    for i, node in enumerate(graph.nodes):
        prefix[i + 1] = prefix[i] + node.flops
    all_cuts = {c.position: c.crossing_bytes for c in cut_points(graph)}
    k = len(cuts)
    memory = [[0] * k for _ in range(k)]
    for i in range(k):
        params: set[str] = set()
        peak_live = largest_output = 0
        for j in range(i + 1, k):
            for node in graph.nodes[cuts[j - 1].position : cuts[j].position]:
                params.update(node.param_names)
                largest_output = max(largest_output, node.output.nbytes if node.output else 0)
            for p in range(cuts[j - 1].position, cuts[j].position + 1):
                peak_live = max(peak_live, all_cuts.get(p, 0))
            memory[i][j] = graph.param_bytes(params) + peak_live + largest_output
    return prefix, memory


def divide(
    graph: ModelGraph,
    model: str,
    servers: Sequence[ServerCapacity],
    *,
    start: int = 0,
    end: int | None = None,
    required: Sequence[int] = (),
    options: DivideOptions = DivideOptions(),
) -> Division:
    """Divides nodes ``start..end`` over ``servers`` (in order; some may be left unused).

    ``required`` positions (device head cuts) are always partition boundaries. Positions outside
    ``start..end`` become partitions with host "device". FailedPrecondition when no division fits memory.

    With ``options.max_live_tensors`` None, candidate cuts are those with at most 1, 2, ... crossing tensors,
    up to ``options.max_live_limit``: the first bound whose division gives every server a partition wins
    (else the bound giving the most partitions, the smallest such). The division records the bound used
    and the search (``Division.max_live_tensors``, ``Division.live_search``).
    """
    if options.max_live_tensors is not None:
        if options.max_live_tensors < 1:
            raise InvalidArgument(f"max_live_tensors must be at least 1, not {options.max_live_tensors}")
        division = _divide_at(graph, model, servers, start, end, required, options, options.max_live_tensors)
        return replace(division, live_search=((options.max_live_tensors, len(division.server_partitions)),))
    if options.max_live_limit < 1:
        raise InvalidArgument(f"max_live_limit must be at least 1, not {options.max_live_limit}")
    wanted = len(servers)
    tried: list[tuple[int, int]] = []
    best: Division | None = None
    failure: FailedPrecondition | None = None
    previous: tuple[int, ...] | None = None
    for bound in range(1, options.max_live_limit + 1):
        positions = tuple(c.position for c in narrow_cuts(graph, bound))
        if positions == previous:
            continue  # no new candidate cut at this bound: the same division
        previous = positions
        try:
            division = _divide_at(graph, model, servers, start, end, required, options, bound)
        except FailedPrecondition as exc:
            failure = exc
            tried.append((bound, 0))
            continue
        count = len(division.server_partitions)
        tried.append((bound, count))
        if best is None or count > len(best.server_partitions):
            best = division
        if count >= wanted:
            break
    if best is None:
        assert failure is not None
        raise failure
    return replace(best, live_search=tuple(tried))


def _divide_at(
    graph: ModelGraph,
    model: str,
    servers: Sequence[ServerCapacity],
    start: int,
    end: int | None,
    required: Sequence[int],
    options: DivideOptions,
    max_live: int,
) -> Division:
    n = len(graph.nodes)
    end = n if end is None else end
    required_set = {p for p in required if start < p < end}
    cuts = [c for c in narrow_cuts(graph, max_live) if start <= c.position <= end]
    positions = {c.position for c in cuts}
    extra = [c for c in cut_points(graph) if c.position in (required_set | {start, end}) - positions]
    cuts = sorted([*cuts, *extra], key=lambda c: c.position)
    prefix, memory = _segment_costs(graph, cuts)
    bytes_per_s = options.link_mbps * 1e6 / 8
    k, s_count = len(cuts), len(servers)
    inf = (float("inf"), float("inf"))
    # best[j][s]: (bottleneck, total) of the best division of cuts[0]..cuts[j] over servers[0..s), in order,
    # each server hosting one segment or none. back[(j, s)] is the segment start, or -1 when server s is skipped.
    best = [[inf] * (s_count + 1) for _ in range(k)]
    back: dict[tuple[int, int], int] = {}
    for s in range(s_count + 1):
        best[0][s] = (0.0, 0.0)
    for s in range(1, s_count + 1):
        server = servers[s - 1]
        for j in range(1, k):
            best[j][s], back[(j, s)] = best[j][s - 1], -1
            for i in range(j):
                prev = best[i][s - 1]
                if prev == inf or memory[i][j] > server.memory_bytes:
                    continue
                if any(cuts[i].position < p < cuts[j].position for p in required_set):
                    continue
                flops = prefix[cuts[j].position] - prefix[cuts[i].position]
                send_s = 0.0 if j == k - 1 else cuts[j].crossing_bytes / bytes_per_s
                stage = flops / server.flops + send_s
                cand = (max(prev[0], stage), prev[1] + stage)
                if cand < best[j][s]:
                    best[j][s], back[(j, s)] = cand, i
    if best[k - 1][s_count] == inf:
        need = graph.param_bytes({p for node in graph.nodes[start:end] for p in node.param_names})
        raise FailedPrecondition(
            f"{model}: no division of nodes {start}..{end} fits the servers' memory "
            f"(parameters alone are {need} bytes; servers offer {[s.memory_bytes for s in servers]})"
        )
    chosen, hosts, j, s = [], [], k - 1, s_count
    while j > 0:
        i = back[(j, s)]
        if i >= 0:
            chosen.append(cuts[j].position)
            hosts.append(servers[s - 1].name)
            j = i
        s -= 1
    chosen.reverse()
    hosts.reverse()
    boundaries = sorted({start, *chosen} - {0, n})
    all_hosts = (["device"] if start > 0 else []) + hosts + (["device"] if end < n else [])
    return replace(partition_at(graph, model, boundaries, all_hosts), max_live_tensors=max_live)


def device_head(graph: ModelGraph, device: DeviceClass, server_flops: float) -> CutPoint:
    """The head cut minimising predicted latency for a device class: its compute, the uplink transfer,
    and the rest on a server of ``server_flops``; the head must fit the device's memory."""
    total = graph.total_flops
    best: tuple[float, int] | None = None
    chosen = None
    for cut in cut_points(graph):
        params = {p for node in graph.nodes[: cut.position] for p in node.param_names}
        if graph.param_bytes(params) > device.memory_bytes:
            continue
        latency = (
            cut.flops_before / device.flops
            + cut.crossing_bytes * 8 / (device.uplink_mbps * 1e6)
            + (total - cut.flops_before) / server_flops
        )
        if best is None or (latency, cut.position) < best:
            best, chosen = (latency, cut.position), cut
    assert chosen is not None  # position 0 needs no memory, so there is always one
    return chosen


def active_head_cuts(
    graph: ModelGraph, devices: Sequence[DeviceClass], server_flops: float, options: DivideOptions = DivideOptions()
) -> dict[str, int]:
    """Head cut position per device class that is active enough to shape the division.

    Classes with no recent requests, or with less than ``min_request_share`` of them, are left out: the
    division then serves the devices that actually send traffic.
    """
    total_rate = sum(d.request_rate for d in devices)
    if total_rate <= 0:
        return {}
    return {
        d.name: device_head(graph, d, server_flops).position
        for d in devices
        if d.request_rate / total_rate >= options.min_request_share
    }
