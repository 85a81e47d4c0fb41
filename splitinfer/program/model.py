"""A model as a small, inspectable program of ATen operations: the unit splitinfer divides and runs.

A :class:`Program` is what ``torch.export`` produced, flattened into plain data: named inputs, a list of
nodes in topological order (operator name, arguments that are literals or references to earlier values),
named outputs, and the parameter tensors the nodes read. Every value has a name unique within the model,
so the tensors crossing between partitions are named the same on every node.

Programs are immutable; :meth:`Program.subprogram` cuts out the part that computes some values from
others, which is how a model is divided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from splitinfer.errors import InvalidArgument

__all__ = ["Node", "Program", "Ref", "ValueSpec"]


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to a named value (a program input, a parameter or a node's output)."""

    name: str


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """Name, dtype and shape of a tensor value."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        size = 1
        for d in self.shape:
            size *= d
        return size * torch.empty((), dtype=self.dtype).element_size()

    def __str__(self) -> str:
        return f"{self.name}:{str(self.dtype).removeprefix('torch.')}{list(self.shape)}"


@dataclass(frozen=True, slots=True)
class Node:
    """One operation: ``name = op(*args, **kwargs)``; arguments may hold :class:`Ref` anywhere."""

    name: str
    op: str  # "aten.conv2d.default" or "getitem"
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    #: Specs of the tensor(s) it produces: one for a tensor, several for a tuple-returning op.
    outputs: tuple[ValueSpec, ...] = ()
    #: The module it came from (``encoder.layer.1.attention``), for error messages; not stored on disk.
    module: str = field(default="", compare=False)

    def refs(self) -> list[str]:
        """Names of the values this node reads, in order of appearance, without repeats."""
        found: list[str] = []
        _collect_refs((self.args, tuple(self.kwargs.values())), found)
        return list(dict.fromkeys(found))


def _collect_refs(value: Any, found: list[str]) -> None:
    if isinstance(value, Ref):
        found.append(value.name)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_refs(item, found)


@dataclass(frozen=True)
class Program:
    """A straight-line program of ATen operations with named inputs, outputs and parameters."""

    inputs: tuple[ValueSpec, ...]
    outputs: tuple[ValueSpec, ...]
    nodes: tuple[Node, ...]
    #: Parameters, buffers and constants the nodes read, by value name.
    params: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def param_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.params.values())

    def value_specs(self) -> dict[str, ValueSpec]:
        """Every tensor value the program defines, by name (inputs and node outputs)."""
        specs = {s.name: s for s in self.inputs}
        for node in self.nodes:
            if len(node.outputs) == 1 and node.outputs[0].name == node.name:
                specs[node.name] = node.outputs[0]
        return specs

    def subprogram(self, inputs: list[str], outputs: list[str]) -> Program:
        """The part of this program that computes ``outputs`` given ``inputs``.

        InvalidArgument when the outputs depend on a value that is neither given nor computable (the cut is
        not a valid one) or when a name is unknown.
        """
        specs = self.value_specs()
        for name in [*inputs, *outputs]:
            if name not in specs:
                raise InvalidArgument(f"no tensor value named {name!r} in this program")
        given = set(inputs)
        producers = {n.name: n for n in self.nodes}
        needed: set[str] = set()
        stack = [o for o in outputs if o not in given]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            node = producers.get(name)
            if node is None:
                if name in self.params:
                    continue
                raise InvalidArgument(f"outputs {outputs} depend on {name!r}, which is not among the inputs {inputs}")
            needed.add(name)
            stack.extend(r for r in node.refs() if r not in given and r not in needed)
        nodes = tuple(n for n in self.nodes if n.name in needed)
        used_params = {r for n in nodes for r in n.refs() if r in self.params}
        return Program(
            inputs=tuple(specs[name] for name in inputs),
            outputs=tuple(specs[name] for name in outputs),
            nodes=nodes,
            params={k: v for k, v in self.params.items() if k in used_params},
        )

    def rename(self, mapping: Mapping[str, str]) -> Program:
        """The same program with values renamed (inputs, node outputs, model outputs); names not in
        ``mapping`` stay. InvalidArgument if a new name collides with an existing one."""
        if not mapping:
            return self
        existing = set(self.value_specs()) | set(self.params) | {n.name for n in self.nodes}
        clashes = sorted(set(mapping.values()) & (existing - set(mapping)))
        if clashes:
            raise InvalidArgument(f"renaming would collide with existing values {clashes}")

        def name(n: str) -> str:
            return mapping.get(n, n)

        def spec(s: ValueSpec) -> ValueSpec:
            return ValueSpec(name(s.name), s.dtype, s.shape)

        def arg(value: Any) -> Any:
            if isinstance(value, Ref):
                return Ref(name(value.name))
            if isinstance(value, tuple):
                return tuple(arg(v) for v in value)
            if isinstance(value, list):
                return [arg(v) for v in value]
            return value

        nodes = tuple(
            Node(
                name(n.name),
                n.op,
                tuple(arg(a) for a in n.args),
                {k: arg(v) for k, v in n.kwargs.items()},
                tuple(spec(o) if o.name == n.name else o for o in n.outputs),
                n.module,
            )
            for n in self.nodes
        )
        return Program(tuple(spec(s) for s in self.inputs), tuple(spec(s) for s in self.outputs), nodes, self.params)

    def rename_exposed(self, mapping: Mapping[str, str], suffix: str = "inner") -> Program:
        """Like :meth:`rename` for the names a program exposes (inputs, outputs): an inner value that
        happens to bear one of the new names is moved aside (``name_<suffix>``) instead of colliding."""
        mapping = {k: v for k, v in mapping.items() if k != v}
        if len(set(mapping.values())) != len(mapping):
            raise InvalidArgument(f"renaming gives two values one name: {sorted(mapping.values())}")
        defined = set(self.value_specs()) | set(self.params) | {n.name for n in self.nodes}
        taken = defined | set(mapping.values())
        for clash in sorted((set(mapping.values()) & defined) - set(mapping)):
            if clash in self.params:
                raise InvalidArgument(f"cannot expose {clash!r}: a parameter bears that name")
            aside = f"{clash}_{suffix}"
            while aside in taken:
                aside += "_"
            mapping[clash] = aside
            taken.add(aside)
        return self.rename(mapping)

    def __str__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        return f"Program({len(self.nodes)} ops, {self.param_bytes} param bytes; ({ins}) -> ({outs}))"
