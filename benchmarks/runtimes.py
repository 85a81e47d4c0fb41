"""Partition runtimes side by side: onnxruntime vs splitinfer's interpreter vs eager torch, per variant.

ResNet-18- and ResNet-50-shaped models (224x224 by default), batch 1, one thread for every engine, each
variant (fp32, fp16, int8) divided in two at the middle of its operations. For each partition and for the
whole model: median time of the interpreter and of onnxruntime (the ONNX twin the pool stores: exported,
int8-quantised with real int8 kernels, checked against the interpreter), and eager torch for the whole
fp32 model. Engines are interleaved (one sample of each per round) so that a noisy machine affects all alike.

    python benchmarks/runtimes.py --out benchmarks/results/runtimes.json
    python benchmarks/runtimes.py --quick   # 64x64, few rounds: keeps the script from rotting in CI
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, median, write_json

from splitinfer import zoo
from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph
from splitinfer.onnx import build_partition_onnx
from splitinfer.program import CompiledProgram, Program
from splitinfer.runtime import LoadedPartition, OrtOptions, PartitionKey, RuntimeOptions
from splitinfer.variants import make_variant


def _interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    for fn in fns.values():
        fn()  # warm up (sessions, allocator)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def _engines(program: Program, variant: str, feeds: dict[str, torch.Tensor], key: PartitionKey) -> dict[str, Any]:
    model, info = build_partition_onnx(program, variant, [feeds])
    ort_options = RuntimeOptions(ort=OrtOptions(intra_op_threads=1, inter_op_threads=1))
    compiled = CompiledProgram(program)
    engines: dict[str, Callable[[], object]] = {"interpreter": lambda: compiled(feeds)}
    if model is not None:
        part = LoadedPartition(key, program, onnx_model=model, onnx=info, options=ort_options)
        engines["onnxruntime"] = lambda: part.run(feeds)
    return {"engines": engines, "onnx": info}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    console = Console(width=160)
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        factory = {"resnet18": zoo.resnet18, "resnet50": zoo.resnet50}[name]
        model, example = factory(args.resolution)
        x = example[0]
        for variant in args.variants.split(","):
            program = make_variant(model, example, variant)
            graph = ModelGraph.build(program, example)
            division = partition_at(graph, name, [len(graph.nodes) // 2])
            values: dict[str, torch.Tensor] = {program.input_names[0]: x}
            values.update(CompiledProgram(program.subprogram(program.input_names, [
                s.name for p in division.partitions for s in p.inputs if s.name not in values
            ]))(values) if len(division.partitions) > 1 else {})  # fmt: skip
            parts: list[tuple[str, Program]] = [("whole", program)]
            parts += [(p.name, division.partition_program(p.name)) for p in division.partitions]
            for part_name, part_program in parts:
                feeds = {s.name: values[s.name] for s in part_program.inputs}
                key = PartitionKey(name, variant, part_name)
                built = _engines(part_program, variant, feeds, key)
                engines = built["engines"]
                if part_name == "whole" and variant == "fp32":
                    eager = model.eval()

                    def eager_run(m: torch.nn.Module = eager, inp: torch.Tensor = x) -> object:
                        with torch.inference_mode():
                            return m(inp)

                    engines = {"eager": eager_run, **engines}
                samples = _interleaved(engines, args.rounds)
                medians = {k: median(v) * 1e3 for k, v in samples.items()}
                row = {
                    "model": name,
                    "resolution": args.resolution,
                    "variant": variant,
                    "partition": part_name,
                    "median_ms": medians,
                    "onnx_available": built["onnx"].available,
                    "onnx_reason": built["onnx"].reason,
                    "quantization": built["onnx"].quantization,
                    "max_abs_error": built["onnx"].max_abs_error,
                }
                if "onnxruntime" in medians:
                    row["ort_vs_interpreter"] = medians["onnxruntime"] / medians["interpreter"]
                if "eager" in medians and "onnxruntime" in medians:
                    row["ort_vs_eager"] = medians["onnxruntime"] / medians["eager"]
                    row["interpreter_vs_eager"] = medians["interpreter"] / medians["eager"]
                rows.append(row)
                console.print(
                    f"{name}@{variant}/{part_name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in medians.items())
                )
    table = Table(title=f"runtime x variant, batch 1, 1 thread, {args.resolution}x{args.resolution}")
    for col in ("model", "variant", "partition", "eager ms", "interp ms", "ORT ms", "ORT/interp", "ORT quant"):
        table.add_column(col)
    for r in rows:
        m = r["median_ms"]
        table.add_row(
            r["model"], r["variant"], r["partition"],
            f"{m['eager']:.2f}" if "eager" in m else "",
            f"{m['interpreter']:.2f}",
            f"{m['onnxruntime']:.2f}" if "onnxruntime" in m else "n/a",
            f"{r['ort_vs_interpreter']:.2f}" if "ort_vs_interpreter" in r else "",
            r["quantization"] or "",
        )  # fmt: skip
    console.print(table)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    parameters = {"torch_threads": 1, "ort_threads": 1, "onnxruntime": metadata.version("onnxruntime")}
    machine = machine_info()
    return {"benchmark": "runtimes", "machine": machine, "parameters": parameters, "args": settings, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--variants", default="fp32,fp16,int8")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="64x64, 3 rounds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.resolution, args.rounds = 64, 3
    result = run(args)
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
