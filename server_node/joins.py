"""Fan-in joins: a step whose inputs arrive in several Process calls (from several nodes) runs once.

Each call deposits the inputs it carries. The call that completes the set takes them all and runs the step;
the others wait, bounded by the join timeout and the request's deadline, until that happens, and then end
their own call normally (the outputs travel on from the call that ran the step).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from splitinfer.errors import DeadlineExceeded

__all__ = ["JoinTable"]

JoinKey = tuple[str, int]  # (request id, step index)


@dataclass
class _Entry:
    needed: frozenset[str]
    values: dict[str, object] = field(default_factory=dict)
    taken: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


class JoinTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[JoinKey, _Entry] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def deposit(
        self, key: JoinKey, values: dict[str, object], needed: frozenset[str], wait_s: float
    ) -> dict[str, object] | None:
        """Adds ``values``; returns every input when this deposit completed the set, None when another
        call took them while this one waited; DeadlineExceeded when the set is still incomplete after
        ``wait_s`` (the entry is then dropped so that no memory is held for a request that failed)."""
        with self._lock:
            entry = self._entries.setdefault(key, _Entry(needed))
        with entry.cond:
            entry.values.update({k: v for k, v in values.items() if k in entry.needed})
            if entry.needed <= entry.values.keys():
                entry.taken = True
                entry.cond.notify_all()
                with self._lock:
                    self._entries.pop(key, None)
                return dict(entry.values)
            deadline = time.monotonic() + wait_s
            while not entry.taken:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(entry.needed - entry.values.keys())
                    with self._lock:
                        self._entries.pop(key, None)
                    entry.taken = True  # other waiters give up too
                    entry.cond.notify_all()
                    raise DeadlineExceeded(
                        f"request {key[0]}: step {key[1]} waited {wait_s:.1f}s for inputs {missing} that never came"
                    )
                entry.cond.wait(left)
            return None
