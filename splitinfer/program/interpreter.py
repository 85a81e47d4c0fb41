"""Runs a :class:`~splitinfer.program.model.Program`: its nodes resolved once to ATen callables."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch

from splitinfer.errors import InvalidArgument
from splitinfer.program.model import Program, Ref
from splitinfer.program.operators import check_operator

__all__ = ["CompiledProgram", "resolve_op", "run_checked"]


def resolve_op(name: str) -> Callable[..., Any]:
    """The callable for an operator name; only the allow-listed ``aten.*`` overloads and ``getitem``
    resolve (:mod:`splitinfer.program.operators`); InvalidArgument naming the operator otherwise."""
    check_operator(name)
    if name == "getitem":
        return operator.getitem
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        raise InvalidArgument(f"operator {name!r} is not an aten operator overload")
    packet = getattr(torch.ops.aten, parts[1], None)
    overload = getattr(packet, parts[2], None) if packet is not None else None
    if not isinstance(overload, torch._ops.OpOverload):
        raise InvalidArgument(f"unknown aten operator {name!r} in this torch build")
    return overload


def _bind(value: Any, slots: dict[str, int]) -> Any:
    """Replaces each Ref with the index of its slot in the environment list."""
    if isinstance(value, Ref):
        return _Slot(slots[value.name])
    if isinstance(value, tuple):
        return tuple(_bind(v, slots) for v in value)
    if isinstance(value, list):
        return [_bind(v, slots) for v in value]
    return value


class _Slot:
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _load(value: Any, env: list[Any]) -> Any:
    if isinstance(value, _Slot):
        return env[value.index]
    if isinstance(value, tuple):
        return tuple(_load(v, env) for v in value)
    if isinstance(value, list):
        return [_load(v, env) for v in value]
    return value


def _needs_load(value: Any) -> bool:
    if isinstance(value, _Slot):
        return True
    if isinstance(value, list | tuple):
        return any(_needs_load(v) for v in value)
    return False


class CompiledProgram:
    """A program ready to run: operators resolved and value names replaced by slot indexes."""

    def __init__(self, program: Program) -> None:
        self.program = program
        slots: dict[str, int] = {}
        for name in [*program.input_names, *program.params, *(n.name for n in program.nodes)]:
            slots.setdefault(name, len(slots))
        self._size = len(slots)
        self._input_slots = [slots[n] for n in program.input_names]
        self._params = [(slots[k], v) for k, v in program.params.items()]
        # Free each intermediate value after its last reader, as eager execution does: holding every value to
        # the end defeats the allocator's reuse of buffers and costs a third more time on CNNs.
        keep = {slots[name] for name in program.params} | {slots[s.name] for s in program.outputs}
        last_read: dict[int, int] = {}
        for i, node in enumerate(program.nodes):
            for ref in node.refs():
                if ref in slots:
                    last_read[slots[ref]] = i
        release: dict[int, list[int]] = {}
        for slot, i in last_read.items():
            if slot not in keep:
                release.setdefault(i, []).append(slot)
        self._steps: list[tuple[int, Callable[..., Any], Any, Any, bool, tuple[int, ...]]] = []
        for i, node in enumerate(program.nodes):
            missing = [r for r in node.refs() if r not in slots]
            if missing:
                raise InvalidArgument(f"node {node.name!r} reads undefined values {missing}")
            args = _bind(node.args, slots)
            kwargs = {k: _bind(v, slots) for k, v in node.kwargs.items()}
            dynamic = _needs_load(args) or _needs_load(tuple(kwargs.values()))
            self._steps.append(
                (slots[node.name], resolve_op(node.op), args, kwargs, dynamic, tuple(release.get(i, ())))
            )
        self._output_slots = [(s.name, slots[s.name]) for s in program.outputs]

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Runs the program on named inputs (checked by the caller) and returns its named outputs."""
        env: list[Any] = [None] * self._size
        for name, slot in zip(self.program.input_names, self._input_slots, strict=True):
            env[slot] = feeds[name]
        for slot, tensor in self._params:
            env[slot] = tensor
        with torch.inference_mode():
            for slot, fn, args, kwargs, dynamic, dead in self._steps:
                if dynamic:
                    env[slot] = fn(*_load(args, env), **{k: _load(v, env) for k, v in kwargs.items()})
                else:
                    env[slot] = fn(*args, **kwargs)
                for index in dead:
                    env[index] = None
        return {name: env[slot] for name, slot in self._output_slots}


def run_checked(program: Program, feeds: Mapping[str, torch.Tensor], what: str = "program") -> dict[str, torch.Tensor]:
    """Runs ``program`` one node at a time; a failing node raises InvalidArgument naming its operator and
    the module it came from (the slow path, for building and checking variants, never for serving)."""
    env: dict[str, Any] = dict(feeds)
    env.update(program.params)

    def load(value: Any) -> Any:
        if isinstance(value, Ref):
            return env[value.name]
        if isinstance(value, tuple):
            return tuple(load(v) for v in value)
        if isinstance(value, list):
            return [load(v) for v in value]
        return value

    with torch.inference_mode():
        for node in program.nodes:
            try:
                env[node.name] = resolve_op(node.op)(*load(node.args), **{k: load(v) for k, v in node.kwargs.items()})
            except Exception as exc:  # any failure of an operator: say which one, where
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                raise InvalidArgument(
                    f"{what}: operator {node.op} (node {node.name!r}, module {node.module or 'unknown'}) "
                    f"fails: {type(exc).__name__}: {first}"
                ) from exc
    return {s.name: env[s.name] for s in program.outputs}
