"""A picture of a division: the graph with partitions coloured and crossing bytes on the edges (Graphviz)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from splitinfer.divider.division import Division
from splitinfer.errors import FailedPrecondition
from splitinfer.graph import ModelGraph

__all__ = ["division_dot", "render_division"]

_COLOURS = ("#a6cee3", "#b2df8a", "#fb9a99", "#fdbf6f", "#cab2d6", "#ffff99", "#1f78b4", "#33a02c")


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024  # type: ignore[assignment]
    return f"{nbytes} B"


def division_dot(graph: ModelGraph, division: Division) -> str:
    """The division as Graphviz DOT: one cluster per partition; edges across partitions carry their bytes."""
    owner = {}
    for index, part in enumerate(division.partitions):
        for node in graph.nodes[part.start : part.end]:
            owner[node.name] = index
    specs = graph.program.value_specs()
    lines = ["digraph division {", "  rankdir=TB; node [shape=box, style=filled, fontsize=10];"]
    for name in graph.program.input_names:
        lines.append(f'  "{name}" [shape=oval, fillcolor=white, label="input {name}\\n{_size(specs[name].nbytes)}"];')
    for index, part in enumerate(division.partitions):
        colour = _COLOURS[index % len(_COLOURS)]
        lines.append(f'  subgraph "cluster_{part.name}" {{')
        lines.append(
            f'    label="{part.name} on {part.host or "-"}: {part.flops / 1e6:.1f} MFLOPs, '
            f'{_size(part.param_bytes)} params"; style=rounded;'
        )
        for node in graph.nodes[part.start : part.end]:
            op = node.op.removeprefix("aten.").split(".")[0]
            lines.append(f'    "{node.name}" [fillcolor="{colour}", label="{op}\\n{node.name}"];')
        lines.append("  }")
    for node in graph.nodes:
        for value in node.inputs:
            crossing = owner.get(value) != owner[node.name]
            attrs = f' [label="{_size(specs[value].nbytes)}", color=red, fontcolor=red, penwidth=2]' if crossing else ""
            lines.append(f'  "{value}" -> "{node.name}"{attrs};')
    for name in graph.program.output_names:
        lines.append(f'  "out_{name}" [shape=oval, fillcolor=white, label="output {name}"];')
        lines.append(f'  "{name}" -> "out_{name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_division(graph: ModelGraph, division: Division, path: Path) -> Path:
    """Writes the picture as SVG or PNG (by the path's suffix) with Graphviz's ``dot``; ``.dot`` writes DOT."""
    dot_text = division_dot(graph, division)
    if path.suffix == ".dot":
        path.write_text(dot_text)
        return path
    fmt = path.suffix.lstrip(".") or "svg"
    if fmt not in ("svg", "png", "pdf"):
        raise FailedPrecondition(f"picture format {fmt!r} is not one of svg, png, pdf, dot")
    dot = shutil.which("dot")
    if dot is None:
        raise FailedPrecondition("Graphviz's `dot` is not installed (Debian package graphviz; `make install` adds it)")
    subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=dot_text.encode(), check=True)
    return path
