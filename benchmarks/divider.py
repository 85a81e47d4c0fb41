"""Graph extraction and division time for a ResNet-50-sized CNN and a transformer of similar graph size.

Stages timed separately: ``torch.export`` + conversion to a Program (export), FLOP measurement over the
graph (graph), and division over S servers with device classes (divide), median of N runs each.

    python benchmarks/divider.py --out benchmarks/results/divider.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, median, time_call, write_json

from splitinfer.divider import DeviceClass, ServerCapacity, active_head_cuts, divide
from splitinfer.graph import ModelGraph, cut_points, narrow_cuts
from splitinfer.program import export_program
from splitinfer.zoo import build, resnet18

SERVERS = [ServerCapacity(f"s{i}", (1 + i) * 5e9, 2 << 30) for i in range(8)]
DEVICES = [
    DeviceClass("phone", 2e9, 1 << 30, 5.85, request_rate=10),
    DeviceClass("jetson", 2e10, 4 << 30, 18.88, request_rate=5),
    DeviceClass("pi", 5e8, 512 << 20, 1.1, request_rate=1),
]


def bench(name: str, factory, repeats: int) -> dict:  # type: ignore[no-untyped-def]
    model, example = factory()
    export_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        program = export_program(model, example)
        export_s.append(time.perf_counter() - start)
    graph_s = time_call(lambda: ModelGraph.build(program, example), repeats)
    graph = ModelGraph.build(program, example)

    def division() -> object:
        heads = active_head_cuts(graph, DEVICES, SERVERS[-1].flops)
        return divide(graph, name, SERVERS, required=list(heads.values()))

    divide_s = time_call(division, repeats)
    result = division()
    return {
        "model": name,
        "ops": len(graph.nodes),
        "cut_points": len(cut_points(graph)),
        "narrow_cuts": len(narrow_cuts(graph)),
        "servers": len(SERVERS),
        "device_classes": len(DEVICES),
        "partitions": len(result.partitions),  # type: ignore[attr-defined]
        "export_ms": median(export_s) * 1e3,
        "graph_ms": median(graph_s) * 1e3,
        "divide_ms": median(divide_s) * 1e3,
        "samples_s": {"export": export_s, "graph": graph_s, "divide": divide_s},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models, few repeats (CI smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/divider.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        models = {"resnet18@64": lambda: resnet18(64), "transformer": lambda: build("transformer")}
        repeats = 1
    else:
        models = {"resnet50": lambda: build("resnet50"), "bert_like": lambda: build("bert_like")}
        repeats = args.repeats
    rows = [bench(name, factory, repeats) for name, factory in models.items()]
    write_json(
        args.out,
        {"benchmark": "divider", "machine": machine_info(), "parameters": {"repeats": repeats}, "results": rows},
    )
    table = Table(title="graph extraction and division (1 thread, median)")
    for column in ("model", "ops", "narrow cuts", "servers", "partitions", "export ms", "graph ms", "divide ms"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["model"],
            str(row["ops"]),
            str(row["narrow_cuts"]),
            str(row["servers"]),
            str(row["partitions"]),
            f"{row['export_ms']:.0f}",
            f"{row['graph_ms']:.0f}",
            f"{row['divide_ms']:.1f}",
        )
    Console(width=120).print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
