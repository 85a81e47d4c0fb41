"""A picture of a division (Graphviz).

By default one box per partition (its host, FLOPs, parameter bytes and peak memory) and one edge per
tensor between partitions, labelled with its name, shape and size; model inputs, outputs and a declared
post-processing stage are drawn at the ends. ``ops=True`` draws the op-level graph instead: every ATen
operation, clustered by partition, with crossing bytes on the edges that leave one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from splitinfer.divider.division import Division
from splitinfer.errors import FailedPrecondition
from splitinfer.graph import ModelGraph

__all__ = ["division_dot", "partition_dot", "render_division"]

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


def _peak_memory(graph: ModelGraph, start: int, end: int, params: int) -> int:
    """Parameters plus the largest set of activations alive at once inside nodes ``start..end``."""
    specs = graph.program.value_specs()
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes[start:end], start):
        for value in node.inputs:
            last_use[value] = i
    peak = 0
    live: dict[str, int] = {}
    for i, node in enumerate(graph.nodes[start:end], start):
        for value in node.inputs:
            if value not in live and value in specs:
                live[value] = specs[value].nbytes
        if node.output is not None:
            live[node.name] = node.output.nbytes
        peak = max(peak, sum(live.values()))
        for value in [v for v in live if last_use.get(v, -1) <= i and v != node.name]:
            del live[value]
    return params + peak


def _escape(text: str) -> str:
    """A name made safe inside a quoted DOT string (names come from models: no quote or backslash survives)."""
    return text.replace("\\", "/").replace('"', "'")


def partition_dot(graph: ModelGraph, division: Division) -> str:
    """The division as Graphviz DOT, one box per partition and one edge per tensor between them."""
    lines = [
        "digraph division {",
        '  rankdir=LR; node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
        f'  labelloc=t; label="{_escape(division.model)}: {len(division.partitions)} partitions";',
    ]
    producer: dict[str, str] = {}
    for part in division.partitions:
        for spec in part.outputs:
            producer[spec.name] = part.name
    for spec in division.program.inputs:
        lines.append(f'  "in:{_escape(spec.name)}" [shape=oval, fillcolor=white, label="input {_escape(str(spec))}"];')
    for index, part in enumerate(division.partitions):
        colour = _COLOURS[index % len(_COLOURS)]
        memory = _peak_memory(graph, part.start, part.end, part.param_bytes)
        label = (
            f"{part.name} on {_escape(part.host or '-')}\\n{part.end - part.start} ops, "
            f"{part.flops / 1e6:.2f} MFLOPs\\nparams {_size(part.param_bytes)}, memory {_size(memory)}"
        )
        lines.append(f'  subgraph "cluster_{part.name}" {{ style=invis;')
        lines.append(f'    "{part.name}" [fillcolor="{colour}", label="{label}"];')
        lines.append("  }")
    for part in division.partitions:
        for spec in part.inputs:
            source = producer.get(spec.name)
            tail = f'"{source}"' if source else f'"in:{_escape(spec.name)}"'
            shape = "x".join(str(d) for d in spec.shape) or "scalar"
            label = f"{_escape(spec.name)}\\n{str(spec.dtype).removeprefix('torch.')}[{shape}]\\n{_size(spec.nbytes)}"
            lines.append(f'  {tail} -> "{part.name}" [label="{label}"];')
    model_outputs = set(division.program.output_names)
    post = division.postprocess
    for spec in division.program.outputs:
        source = producer.get(spec.name, division.partitions[-1].name)
        if post is not None and spec.name in post.inputs:
            continue
        lines.append(
            f'  "out:{_escape(spec.name)}" [shape=oval, fillcolor=white, label="output {_escape(str(spec))}"];'
        )
        lines.append(f'  "{source}" -> "out:{_escape(spec.name)}";')
    if post is not None:
        label = f"post-processing: {_escape(post.stage)}\\non the last place of the plan\\n-> " + _escape(
            ", ".join(post.outputs)
        )
        lines.append(f'  "postprocess" [shape=component, fillcolor="#eeeeee", label="{label}"];')
        for name in post.inputs:
            if name in model_outputs:
                source = producer.get(name, division.partitions[-1].name)
                lines.append(f'  "{source}" -> "postprocess" [label="{_escape(name)}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_division(graph: ModelGraph, division: Division, path: Path, *, ops: bool = False) -> Path:
    """Writes the picture as SVG or PNG (by the path's suffix) with Graphviz's ``dot``; ``.dot`` writes DOT.
    ``ops`` draws every operation instead of one box per partition."""
    dot_text = division_dot(graph, division) if ops else partition_dot(graph, division)
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
