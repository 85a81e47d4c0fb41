"""``splitinfer``: the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console

from splitinfer.commands import divide, pool
from splitinfer.errors import SplitInferError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="splitinfer", description="Split inference across devices and servers.")
    parser.add_argument("--log-level", default="WARNING")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the whole system on this machine with emulated devices")
    demo.add_argument("--output", type=Path, default=Path("demo-output"), help="where the pool, results and plot go")
    demo.add_argument("--skeleton", action="store_true", help="run only the walking skeleton (head here, tail there)")
    divide.add_parser(commands)
    pool.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console(width=140)
    try:
        if args.command == "demo":
            if args.skeleton:
                from splitinfer.demo import run_demo

                return 0 if run_demo(console) else 1
            from splitinfer.demo_system import run_system_demo

            return 0 if run_system_demo(args.output, console) else 1
        if args.command == "divide":
            return divide.run(args, console)
        if args.command == "pool":
            return pool.run(args, console)
    except SplitInferError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
