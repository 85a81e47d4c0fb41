"""What every daemon's main does: tell its starter where it listens, then run until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

__all__ = ["announce", "wait_for_shutdown"]


def announce(path: Path | None, text: str) -> None:
    """Writes ``text`` (a port or an address) to ``path`` atomically: readers never see half of it."""
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def wait_for_shutdown() -> None:
    """Blocks until the process receives SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
