"""The model as a DAG of operations with costs: FLOPs, parameter bytes and output bytes per node.

Built from a :class:`~splitinfer.program.Program` by running it once on example inputs with
``torch.utils.flop_counter`` counting each operation. Edges are tensor values; a value read by several
nodes is one value with several consumers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from splitinfer.program import Program, ValueSpec
from splitinfer.program.interpreter import resolve_op
from splitinfer.program.model import Ref

__all__ = ["GraphNode", "ModelGraph"]


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One operation with its costs."""

    name: str
    op: str
    #: Floating-point operations of one run (0 for data movement).
    flops: int
    #: Bytes of the parameters this node reads (each parameter counted at every node that reads it).
    param_names: tuple[str, ...]
    #: Tensor values it reads (program inputs or other nodes), in order.
    inputs: tuple[str, ...]
    #: Its output when it is a single tensor (None for tuple-producing ops read through getitem).
    output: ValueSpec | None


@dataclass(frozen=True)
class ModelGraph:
    """Nodes in topological order, with consumers per value."""

    program: Program
    nodes: tuple[GraphNode, ...]
    consumers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, program: Program, example_inputs: Sequence[torch.Tensor] | None = None) -> ModelGraph:
        """Measures every node's FLOPs by running the program once on ``example_inputs`` (random if None)."""
        if example_inputs is None:
            example_inputs = [_random(spec) for spec in program.inputs]
        env: dict[str, object] = dict(zip(program.input_names, example_inputs, strict=True))
        env.update(program.params)
        nodes = []
        consumers: dict[str, list[str]] = {}
        with torch.inference_mode():
            for node in program.nodes:
                args = tuple(_load(a, env) for a in node.args)
                kwargs = {k: _load(v, env) for k, v in node.kwargs.items()}
                counter = FlopCounterMode(display=False)
                with counter:
                    env[node.name] = resolve_op(node.op)(*args, **kwargs)
                refs = node.refs()
                params = tuple(r for r in refs if r in program.params)
                inputs = tuple(r for r in refs if r not in program.params)
                for r in inputs:
                    consumers.setdefault(r, []).append(node.name)
                single = len(node.outputs) == 1 and node.outputs[0].name == node.name
                nodes.append(
                    GraphNode(
                        node.name,
                        node.op,
                        int(counter.get_total_flops()),
                        params,
                        inputs,
                        node.outputs[0] if single else None,
                    )
                )
        return cls(program, tuple(nodes), {k: tuple(v) for k, v in consumers.items()})

    @property
    def total_flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def param_bytes(self, names: set[str] | frozenset[str]) -> int:
        """Bytes of the given parameters (each counted once)."""
        return sum(self.program.params[n].numel() * self.program.params[n].element_size() for n in names)


def _random(spec: ValueSpec) -> torch.Tensor:
    if spec.dtype.is_floating_point:
        return torch.randn(spec.shape, dtype=spec.dtype)
    if spec.dtype == torch.bool:
        return torch.zeros(spec.shape, dtype=torch.bool)
    return torch.zeros(spec.shape, dtype=spec.dtype)


def _load(value: object, env: dict[str, object]) -> object:
    if isinstance(value, Ref):
        return env[value.name]
    if isinstance(value, tuple):
        return tuple(_load(v, env) for v in value)
    if isinstance(value, list):
        return [_load(v, env) for v in value]
    return value
