"""``splitinfer pool list|show``: what a pool holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from splitinfer.pool import ModelPool

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("pool", help="list or show models in a pool")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="models, variants and divisions")
    listing.add_argument("--pool", type=Path, required=True)
    show = actions.add_parser("show", help="the partitions of one model's divisions")
    show.add_argument("model")
    show.add_argument("--pool", type=Path, required=True)
    show.add_argument("--variant", default="")


def run(args: argparse.Namespace, console: Console) -> int:
    pool = ModelPool(args.pool)
    if args.action == "list":
        table = Table(title=f"pool {args.pool}")
        for column in ("model", "task", "variant", "accuracy", "divisions"):
            table.add_column(column)
        for entry in pool.variants():
            how = "measured" if entry.accuracy_measured else "declared"
            table.add_row(
                entry.model,
                entry.task,
                entry.variant,
                f"{entry.accuracy:.3f} ({how})",
                ", ".join(f"{d} ({sha[:12]})" for d, sha in sorted(entry.divisions.items())),
            )
        console.print(table)
        shared = pool.shared_partitions()
        for group in shared:
            console.print(f"shared partition: {' = '.join(group)}")
        return 0
    entries = [e for e in pool.variants(args.model) if e.model == args.model]
    if args.variant:
        entries = [e for e in entries if e.variant == args.variant]
    if not entries:
        console.print(f"[red]no model {args.model!r}{' variant ' + args.variant if args.variant else ''} in the pool")
        return 1
    for entry in entries:
        for division, sha in sorted(entry.divisions.items()):
            manifest = pool.manifest(sha)
            table = Table(title=f"{entry.model}@{entry.variant} division {division} ({sha[:12]})")
            for column in ("partition", "host", "inputs", "outputs", "MFLOPs", "params", "successors", "shared with"):
                table.add_column(column)
            for part in manifest["partitions"]:
                table.add_row(
                    part["name"],
                    part["host"] or "-",
                    "\n".join(part["inputs"]),
                    "\n".join(part["outputs"]),
                    f"{part['flops'] / 1e6:.2f}",
                    f"{part['param_bytes']:,}",
                    "\n".join(f"{v} -> {', '.join(s) or 'output'}" for v, s in part["successors"].items()),
                    "\n".join(part.get("shared_with", [])),
                )
            console.print(table)
    return 0
