"""Models as programs of ATen operations: export, cut, save, load and run.

Public surface: :class:`Program`, :func:`export_program`, :class:`CompiledProgram`,
:func:`save_program`, :func:`load_program`.
"""

from splitinfer.program.export import example_feeds, export_program, flatten_example, from_exported
from splitinfer.program.interpreter import CompiledProgram
from splitinfer.program.model import Node, Program, Ref, ValueSpec
from splitinfer.program.serde import load_program, save_program

__all__ = [
    "CompiledProgram",
    "Node",
    "Program",
    "Ref",
    "ValueSpec",
    "example_feeds",
    "export_program",
    "flatten_example",
    "from_exported",
    "load_program",
    "save_program",
]
