"""Console commands, each behind a check that the install holds what it needs.

The core install (``pip install 'splitinfer[agent]'``) is a device's: onnxruntime, numpy, gRPC, codecs, no
torch. Server nodes, the front-end, the divider and the CLI need the ``server`` extra; run without it, their
commands say so and how to install it instead of ending in a traceback. ``splitinfer-device`` (the
torch-free agent runner) needs only the core.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["agent", "cli", "device", "divider", "frontend", "server"]

HINT = "pip install 'splitinfer[server]'"


def _launch(command: str, target: str) -> int:
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in ("splitinfer", "server_node", "edge_agent"):
            raise
        print(
            f"{command}: needs the server install ({exc.name!r} is missing): {HINT}. A device without torch "
            "runs its partitions with splitinfer-device (the core or [agent] install).",
            file=sys.stderr,
        )
        return 2
    main: Callable[[], int | None] = getattr(module, function)
    return main() or 0


def cli() -> int:
    return _launch("splitinfer", "splitinfer.cli:main")


def server() -> int:
    return _launch("splitinfer-server", "server_node.__main__:main")


def agent() -> int:
    return _launch("splitinfer-agent", "edge_agent.__main__:main")


def frontend() -> int:
    return _launch("splitinfer-frontend", "splitinfer.frontend.__main__:main")


def divider() -> int:
    return _launch("splitinfer-divider", "splitinfer.controller.__main__:main")


def device() -> int:
    return _launch("splitinfer-device", "edge_agent.runner:main")
