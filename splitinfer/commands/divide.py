"""``splitinfer divide MODULE:FACTORY``: export, measure, divide and store a model and its variants."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch
from rich.console import Console
from rich.progress import Progress

from splitinfer.divider import (
    DeviceClass,
    DivideOptions,
    LocalDivisionRunner,
    ServerCapacity,
    active_head_cuts,
    divide,
    load_capacities,
)
from splitinfer.divider.picture import render_division
from splitinfer.errors import InvalidArgument
from splitinfer.graph import ModelGraph, bottlenecks
from splitinfer.pool import ModelPool
from splitinfer.pool.sources import put_source
from splitinfer.postprocess import PostprocessSpec
from splitinfer.program import example_feeds
from splitinfer.runtime.compute import measure_flops
from splitinfer.variants import VARIANT_KINDS, Accuracy, make_variant, measure_top1, output_drift

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "divide",
        help="divide a model into partitions and store it, with its variants, in a pool",
        description="FACTORY is a callable returning (model, example_inputs) or "
        "(model, example_inputs, (eval_inputs, eval_labels)); example_inputs is a tuple of positional "
        "inputs or a dict of keyword inputs (tensors, or dicts/lists of tensors). With an evaluation set each "
        "variant's accuracy is measured, otherwise it is declared with --accuracy. A model may declare a "
        "post-processing stage (attribute `postprocess`, a splitinfer.postprocess.PostprocessSpec) that "
        "runs after its last partition.",
    )
    parser.add_argument("factory", help="MODULE:FACTORY, e.g. splitinfer.zoo:resnet18")
    parser.add_argument("--pool", type=Path, required=True, help="pool directory (created if missing)")
    parser.add_argument("--name", help="model name in the pool (default: the factory's name)")
    parser.add_argument("--task", default="", help="task the model solves; models of one task are alternatives")
    parser.add_argument("--variants", default="fp32", help=f"comma-separated, of {','.join(VARIANT_KINDS)}")
    parser.add_argument("--division-name", default="default")
    parser.add_argument("--capacities", type=Path, help="JSON file with servers and device classes")
    parser.add_argument("--nodes", help="comma-separated server node addresses: capacities from their status API")
    parser.add_argument(
        "--cut-after",
        default="",
        help="comma-separated tensor names that must end a partition (e.g. a shared backbone)",
    )
    parser.add_argument("--link-mbps", type=float, default=1000.0, help="bandwidth between servers")
    parser.add_argument("--accuracy", default="", help="declared accuracies, e.g. fp32=0.91,int8=0.90")
    parser.add_argument(
        "--picture", type=Path, help="write a picture of the first variant's division (.svg, .png, .dot)"
    )
    parser.add_argument(
        "--picture-ops", action="store_true", help="the picture shows every operation, not only the partitions"
    )
    parser.add_argument(
        "--max-live-tensors",
        default="auto",
        help="candidate cuts send at most this many tensors; 'auto' (default) searches 1..--max-live-limit "
        "for the smallest that gives every server a partition",
    )
    parser.add_argument("--max-live-limit", type=int, default=8, help="upper bound of the 'auto' search")
    parser.add_argument(
        "--no-onnx", action="store_true", help="store programs only, without their checked ONNX twins (faster)"
    )


def _factory(spec: str) -> tuple[str, Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidArgument(f"factory {spec!r} must be MODULE:FACTORY")
    try:
        return attr, getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgument(f"cannot load factory {spec!r}: {exc}") from None


def _servers_from_nodes(addresses: list[str]) -> list[ServerCapacity]:
    from edge_agent.client import NodeClient

    servers = []
    for address in addresses:
        with NodeClient(address) as client:
            status = client.status()
        servers.append(ServerCapacity(address, status.compute_flops, status.machine_available_bytes))
    return servers


def _this_machine() -> list[ServerCapacity]:
    return [ServerCapacity("local", measure_flops(0.2), psutil.virtual_memory().available)]


def _declared(text: str) -> dict[str, float]:
    declared = {}
    for item in filter(None, text.split(",")):
        kind, _, value = item.partition("=")
        try:
            declared[kind.strip()] = float(value)
        except ValueError:
            raise InvalidArgument(f"--accuracy item {item!r} is not KIND=VALUE") from None
    return declared


def _positions_after(graph: ModelGraph, names: str) -> list[int]:
    index = {node.name: i for i, node in enumerate(graph.nodes)}
    positions = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in index:
            raise InvalidArgument(f"--cut-after {name!r}: no such tensor; some are {list(index)[:8]}")
        positions.append(index[name] + 1)
    return positions


def _example(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword example inputs from what a factory returned."""
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, torch.Tensor):
        return (example,), {}
    return tuple(example), {}


def _max_live(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"--max-live-tensors {text!r} is not a number or 'auto'") from None
    if value < 1:
        raise InvalidArgument(f"--max-live-tensors must be at least 1, not {value}")
    return value


def run(args: argparse.Namespace, console: Console) -> int:
    factory_name, factory = _factory(args.factory)
    name = args.name or factory_name
    kinds = [k.strip() for k in args.variants.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in VARIANT_KINDS]
    if unknown:
        raise InvalidArgument(f"unknown variants {unknown}; known: {list(VARIANT_KINDS)}")
    declared = _declared(args.accuracy)
    servers: list[ServerCapacity]
    devices: list[DeviceClass] = []
    if args.nodes:
        servers = _servers_from_nodes([a.strip() for a in args.nodes.split(",") if a.strip()])
    elif args.capacities:
        servers, devices = load_capacities(args.capacities)
    else:
        servers = _this_machine()
    if args.capacities and args.nodes:
        devices = load_capacities(args.capacities)[1]
    pool = ModelPool(args.pool)
    built = factory()
    model = built[0]
    example_args, example_kwargs = _example(built[1])
    eval_set = built[2] if len(built) > 2 else None
    options = DivideOptions(
        link_mbps=args.link_mbps, max_live_tensors=_max_live(args.max_live_tensors), max_live_limit=args.max_live_limit
    )
    stage = getattr(model, "postprocess", None)
    postprocess = stage if isinstance(stage, PostprocessSpec) else None  # not a method of that name
    reference: dict[str, Any] | None = None
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"dividing {name}", total=len(kinds))
        for kind in kinds:
            progress.update(task, description=f"{name}@{kind}: export")
            program = make_variant(model, example_args, kind, example_kwargs)
            progress.update(task, description=f"{name}@{kind}: measure")
            feeds = example_feeds(program, example_args, example_kwargs)
            graph = ModelGraph.build(program, list(feeds.values()))
            heads = active_head_cuts(graph, devices, max(s.flops for s in servers), options) if devices else {}
            required = [*heads.values(), *_positions_after(graph, args.cut_after)]
            progress.update(task, description=f"{name}@{kind}: divide")
            division = divide(graph, name, servers, required=required, options=options)
            if postprocess is not None:
                division = replace(division, postprocess=postprocess)
            outputs = LocalDivisionRunner(division).run(feeds)
            if reference is None:
                reference = outputs
            drift = output_drift(reference, outputs)
            if eval_set is not None:
                inputs, labels = eval_set
                accuracy = measure_top1(program, tuple(inputs), labels, source=f"{len(labels)} evaluation samples")
            elif kind in declared:
                accuracy = Accuracy(declared[kind], False, "declared with --accuracy")
            else:
                accuracy = Accuracy(0.0, False, "unknown: no evaluation set and none declared")
            sha = pool.add_division(
                division,
                variant=kind,
                division_name=args.division_name,
                task=args.task,
                accuracy=accuracy.value,
                accuracy_measured=accuracy.measured,
                onnx=not args.no_onnx,
            )
            put_source(pool, name, kind, program)  # the division controller divides it again from this
            progress.advance(task)
            console.print(f"[bold]{name}@{kind}[/] accuracy {accuracy}; manifest {sha[:16]}")
            console.print(f"  drift from {kinds[0]} on the example: {drift}")
            console.print(str(division))
            if heads:
                console.print(f"  device head cuts: {heads}")
            best = bottlenecks(graph, 1)
            if best:
                console.print(f"  narrowest interior cut: {best[0]}")
            if args.picture and kind == kinds[0]:
                render_division(graph, division, args.picture, ops=args.picture_ops)
                console.print(f"  picture: {args.picture}")
    return 0
