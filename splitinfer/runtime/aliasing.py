"""What a program does to its inputs' memory: which inputs it may write in place, which it may return.

Computed once when a partition loads, from the operator schemas of its nodes (every ATen overload declares
which arguments it writes, ``Tensor(a!)``, and which its result may alias, ``Tensor(a)``), following aliases
through views (``reshape``, ``transpose``, ``getitem`` of a ``split``...): an in-place op on a view of an
input writes that input. Conservative: an operator whose schema cannot be read, or whose arguments do not
bind to it, counts as writing and returning every input it reads; the few operators whose result may be an
argument without the schema saying so (eval-mode dropout) are listed.

A decoder may hand a partition whose inputs are :attr:`InputEffects.read_only` the received bytes in place
(no copy); any other partition gets a private copy (``splitinfer.codecs.decode_wire``'s ``share``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from splitinfer.errors import InvalidArgument
from splitinfer.program import Program
from splitinfer.program.interpreter import resolve_op
from splitinfer.program.model import Ref

__all__ = ["InputEffects", "input_effects"]

#: Operators whose result may be one of their arguments although their schema declares no alias (by argument
#: name, whether given by position or keyword): eval-mode dropout (``train=False``, or ``p=0``) returns its
#: input tensor itself. Found by checking every unannotated operator on the allow-list for a result sharing
#: its input's storage.
_UNDECLARED_ALIASES = {"aten.dropout.default": frozenset({"input"})}
#: Operators that write arguments their schema does not mark as written: batch norm in training mode updates
#: ``running_mean`` and ``running_var`` in place.
_UNDECLARED_WRITES = {"aten.batch_norm.default": frozenset({"running_mean", "running_var"})}


@dataclass(frozen=True, slots=True)
class InputEffects:
    """The inputs a program may write in place, and those its outputs may alias (share memory with)."""

    writes: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()

    @property
    def read_only(self) -> bool:
        """Whether the program neither writes any input nor returns one (or a view of one): its inputs may be
        memory it must not change, such as the bytes a request arrived in."""
        return not self.writes and not self.returns


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, Ref):
        yield value.name
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _refs(item)


def _bind(schema: Any, args: tuple[Any, ...], kwargs: Any) -> list[tuple[Any, Any]] | None:
    """(schema argument, value) for each argument given; None when they do not fit the schema."""
    positional = [a for a in schema.arguments if not a.kwarg_only]
    if len(args) > len(positional):
        return None
    by_name = {a.name: a for a in schema.arguments}
    bound = list(zip(positional, args, strict=False))
    for name, value in kwargs.items():
        if name not in by_name:
            return None
        bound.append((by_name[name], value))
    return bound


def input_effects(program: Program) -> InputEffects:
    """The program's effects on its inputs (see the module)."""
    # value name -> the program inputs it may share memory with
    aliases: dict[str, frozenset[str]] = {name: frozenset((name,)) for name in program.input_names}
    writes: set[str] = set()
    for node in program.nodes:
        touched_by_arg = [(value, frozenset().union(*(aliases.get(r, frozenset()) for r in _refs(value)))) for value in
                          (*node.args, *node.kwargs.values())]  # fmt: skip
        if not any(touched for _, touched in touched_by_arg):
            continue  # reads no input's memory
        if node.op == "getitem":  # an element of a tuple result shares that result's memory
            aliases[node.name] = frozenset().union(*(touched for _, touched in touched_by_arg))
            continue
        try:
            schema = resolve_op(node.op)._schema  # type: ignore[attr-defined]
        except InvalidArgument:
            schema = None
        bound = _bind(schema, node.args, node.kwargs) if schema is not None else None
        if bound is None:  # unknown to us: assume the worst about every input it reads
            every = frozenset().union(*(touched for _, touched in touched_by_arg))
            writes |= every
            aliases[node.name] = every
            continue
        shared: set[str] = set()
        undeclared_aliases = _UNDECLARED_ALIASES.get(node.op, frozenset())
        undeclared_writes = _UNDECLARED_WRITES.get(node.op, frozenset())
        for argument, value in bound:
            info = argument.alias_info
            touched = frozenset().union(*(aliases.get(r, frozenset()) for r in _refs(value)))
            if argument.name in undeclared_writes:
                writes |= touched
            if argument.name in undeclared_aliases:
                shared |= touched
            if info is None:
                continue  # neither written nor aliased by the result, by its schema
            if info.is_write:
                writes |= touched
            shared |= touched  # an annotated argument may be (part of) what the op returns
        if shared:
            aliases[node.name] = frozenset(shared)
    returned = frozenset().union(*(aliases.get(s.name, frozenset()) for s in program.outputs))
    return InputEffects(frozenset(writes), returned)
