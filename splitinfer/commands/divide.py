"""``splitinfer divide MODULE:FACTORY``: export, measure, divide and store a model and its variants."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import Progress

from splitinfer.divider import DeviceClass, DivideOptions, ServerCapacity, active_head_cuts, divide, load_capacities
from splitinfer.divider.picture import render_division
from splitinfer.errors import InvalidArgument
from splitinfer.graph import ModelGraph, bottlenecks
from splitinfer.pool import ModelPool
from splitinfer.runtime.compute import measure_flops
from splitinfer.variants import VARIANT_KINDS, Accuracy, make_variant, measure_top1

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "divide",
        help="divide a model into partitions and store it, with its variants, in a pool",
        description="FACTORY is a callable returning (model, example_inputs) or "
        "(model, example_inputs, (eval_inputs, eval_labels)); with an evaluation set each variant's "
        "accuracy is measured, otherwise it is declared with --accuracy.",
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
    parser.add_argument("--picture", type=Path, help="write a picture of the fp32 division (.svg, .png, .dot)")


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
    model, example = built[0], tuple(built[1])
    eval_set = built[2] if len(built) > 2 else None
    options = DivideOptions(link_mbps=args.link_mbps)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"dividing {name}", total=len(kinds))
        for kind in kinds:
            progress.update(task, description=f"{name}@{kind}: export")
            program = make_variant(model, example, kind)
            progress.update(task, description=f"{name}@{kind}: measure")
            graph = ModelGraph.build(program, example)
            heads = active_head_cuts(graph, devices, max(s.flops for s in servers), options) if devices else {}
            required = [*heads.values(), *_positions_after(graph, args.cut_after)]
            progress.update(task, description=f"{name}@{kind}: divide")
            division = divide(graph, name, servers, required=required, options=options)
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
            )
            progress.advance(task)
            console.print(f"[bold]{name}@{kind}[/] accuracy {accuracy}; manifest {sha[:16]}")
            console.print(str(division))
            if heads:
                console.print(f"  device head cuts: {heads}")
            best = bottlenecks(graph, 1)
            if best:
                console.print(f"  narrowest interior cut: {best[0]}")
            if args.picture and kind == kinds[0]:
                render_division(graph, division, args.picture)
                console.print(f"  picture: {args.picture}")
    return 0
