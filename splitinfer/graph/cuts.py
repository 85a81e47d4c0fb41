"""Cuts of a model graph: where it can be divided and what crosses each cut.

A division cuts the nodes' topological order into contiguous segments. Every such cut is valid on a DAG:
a segment only reads values from earlier segments, so partitions never form a cycle. At a cut position
``p`` (after the first ``p`` nodes) the crossing tensors are the values defined before ``p`` and read at or
after it: what must travel across the cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitinfer.graph.model_graph import ModelGraph
from splitinfer.program import ValueSpec

__all__ = ["CutPoint", "bottlenecks", "cut_points", "narrow_cuts"]


@dataclass(frozen=True, slots=True)
class CutPoint:
    """Cut after the first ``position`` nodes."""

    position: int
    crossing: tuple[ValueSpec, ...]
    flops_before: int

    @property
    def crossing_bytes(self) -> int:
        return sum(s.nbytes for s in self.crossing)

    def __str__(self) -> str:
        names = ", ".join(s.name for s in self.crossing)
        return f"cut@{self.position} [{names}] {self.crossing_bytes} B"


def cut_points(graph: ModelGraph) -> list[CutPoint]:
    """Every valid cut position 0..n with its crossing tensors.

    Position 0 sends the model inputs; position n sends nothing onward (everything ran before the cut).
    Positions where a crossing value is not a single tensor (the tuple of a multi-output op before its
    ``getitem``) are skipped.
    """
    program = graph.program
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    specs = program.value_specs()
    defined_at = {name: -1 for name in program.input_names}
    defined_at.update(index)
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = i
    n = len(graph.nodes)
    cuts = []
    flops = 0
    for position in range(n + 1):
        live = [v for v, d in defined_at.items() if d < position and last_use.get(v, -2) >= position]
        if all(v in specs for v in live):
            cuts.append(CutPoint(position, tuple(specs[v] for v in live), flops))
        if position < n:
            flops += graph.nodes[position].flops
    return cuts


def narrow_cuts(graph: ModelGraph, max_live: int = 1) -> list[CutPoint]:
    """Cuts with at most ``max_live`` crossing tensors (plus both ends): the coarse grid a divider searches.

    Between two narrow cuts lies a block (a residual block, an inception module, an attention block) whose
    inner cuts would each send more tensors; searching only the narrow ones keeps division fast on large
    graphs and, for chains and residual networks, keeps every cut worth taking.
    """
    cuts = cut_points(graph)
    last = len(graph.nodes)
    return [c for c in cuts if len(c.crossing) <= max_live or c.position in (0, last)]


def bottlenecks(graph: ModelGraph, count: int = 3) -> list[CutPoint]:
    """The interior cuts where the network thins most: fewest crossing bytes, smaller than the input.

    Sorted by crossing bytes, then by position (earlier is better for a device head).
    """
    cuts = cut_points(graph)
    if not cuts:
        return []
    input_bytes = cuts[0].crossing_bytes
    interior = [c for c in cuts[1:-1] if 0 < c.crossing_bytes < input_bytes]
    return sorted(interior, key=lambda c: (c.crossing_bytes, c.position))[:count]
