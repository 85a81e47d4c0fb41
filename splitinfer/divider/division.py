"""A division: the partition DAG of a model, immutable and printable."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from splitinfer.graph import ModelGraph
from splitinfer.postprocess import PostprocessSpec
from splitinfer.program import Program, ValueSpec

__all__ = ["Division", "PartitionSpec", "partition_at"]


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """One partition: a contiguous run of nodes, what it reads and produces, and where its outputs go."""

    name: str
    #: Index range [start, end) in the graph's topological order.
    start: int
    end: int
    inputs: tuple[ValueSpec, ...]
    outputs: tuple[ValueSpec, ...]
    flops: int
    param_bytes: int
    #: For each output, the partitions that read it (several: fan-out); empty for model outputs only.
    successors: tuple[tuple[str, tuple[str, ...]], ...]
    #: Server it was sized for, if any ("device" for a device head).
    host: str = ""

    @property
    def output_bytes(self) -> int:
        return sum(s.nbytes for s in self.outputs)


@dataclass(frozen=True)
class Division:
    """Partitions in topological order; ``program`` is the whole model they were cut from."""

    model: str
    partitions: tuple[PartitionSpec, ...]
    program: Program
    #: Cuts with at most this many crossing tensors were the candidates (0: cut positions given by hand).
    max_live_tensors: int = 0
    #: The divider's search: (bound on crossing tensors, partitions on servers) for each bound tried.
    live_search: tuple[tuple[int, int], ...] = ()
    #: The stage that runs after the last partition, outside the program (a detector's decode and NMS).
    postprocess: PostprocessSpec | None = None

    @property
    def server_partitions(self) -> tuple[PartitionSpec, ...]:
        """Partitions not on the device."""
        return tuple(p for p in self.partitions if p.host != "device")

    def partition_program(self, name: str) -> Program:
        spec = self.get(name)
        return self.program.subprogram([s.name for s in spec.inputs], [s.name for s in spec.outputs])

    def get(self, name: str) -> PartitionSpec:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError(f"division of {self.model} has no partition {name!r}")

    def __str__(self) -> str:
        rows = [f"division of {self.model}: {len(self.partitions)} partitions"]
        if self.live_search:
            search = ", ".join(f"<={bound}: {count}" for bound, count in self.live_search)
            rows[0] += f"; cuts of at most {self.max_live_tensors} live tensors (partitions by bound: {search})"
        rows.append(
            f"  {'partition':<10} {'host':<10} {'ops':>9} {'MFLOPs':>10} {'params KB':>10} {'out KB':>9}  -> to"
        )
        for p in self.partitions:
            to = "; ".join(f"{v}->{','.join(s) or 'output'}" for v, s in p.successors)
            rows.append(
                f"  {p.name:<10} {p.host or '-':<10} {f'{p.start}..{p.end}':>9} {p.flops / 1e6:>10.2f} "
                f"{p.param_bytes / 1024:>10.1f} {p.output_bytes / 1024:>9.1f}  {to}"
            )
        if self.postprocess is not None:
            pp = self.postprocess
            rows.append(f"  then {pp.stage} on the last place: {', '.join(pp.inputs)} -> {', '.join(pp.outputs)}")
        return "\n".join(rows)


def partition_at(graph: ModelGraph, model: str, positions: list[int], hosts: list[str] | None = None) -> Division:
    """The division cutting the topological order at ``positions`` (0 < p < n, ascending)."""
    n = len(graph.nodes)
    bounds = [0, *sorted(set(p for p in positions if 0 < p < n)), n]
    names = [f"p{i}" for i in range(len(bounds) - 1)]
    owner: dict[str, str] = {}
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        for node in graph.nodes[a:b]:
            owner[node.name] = names[i]
    specs = graph.program.value_specs()
    model_outputs = set(graph.program.output_names)
    readers: dict[str, list[str]] = {}
    for node in graph.nodes:
        for value in node.inputs:
            part = owner[node.name]
            if owner.get(value) != part and part not in readers.setdefault(value, []):
                readers[value].append(part)
    partitions = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        nodes = graph.nodes[a:b]
        inside = {node.name for node in nodes}
        inputs = list(dict.fromkeys(v for node in nodes for v in node.inputs if v not in inside))
        outputs = [node.name for node in nodes if node.name in readers or node.name in model_outputs]
        params = {p for node in nodes for p in node.param_names}
        partitions.append(
            PartitionSpec(
                name=names[i],
                start=a,
                end=b,
                inputs=tuple(specs[v] for v in inputs),
                outputs=tuple(specs[v] for v in outputs),
                flops=sum(node.flops for node in nodes),
                param_bytes=graph.param_bytes(params),
                successors=tuple((v, tuple(readers.get(v, ()))) for v in outputs),
                host=hosts[i] if hosts and i < len(hosts) else "",
            )
        )
    return Division(model, tuple(partitions), graph.program)
