"""Fan-in joins: a step whose inputs arrive in several Process calls (from several nodes) runs once.

Each call deposits the inputs it carries. The call that completes the set takes them all and runs the step;
the others wait (a coroutine each, no thread), bounded by the join timeout and the request's deadline, until
that happens, and then end their own call normally (the outputs travel on from the call that ran the step).
Runs on the node's event loop: no locks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from splitinfer.errors import DeadlineExceeded, ResourceExhausted

__all__ = ["JoinTable"]

JoinKey = tuple[str, int]  # (request id, step index)


@dataclass
class _Entry:
    needed: frozenset[str]
    values: dict[str, object] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class JoinTable:
    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: dict[JoinKey, _Entry] = {}
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    async def deposit(
        self, key: JoinKey, values: dict[str, object], needed: frozenset[str], wait_s: float
    ) -> dict[str, object] | None:
        """Adds ``values``; returns every input when this deposit completed the set, None when another
        call took them while this one waited; DeadlineExceeded when the set is still incomplete after
        ``wait_s`` (the entry is then dropped so that no memory is held for a request that failed)."""
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self._max_entries:
                raise ResourceExhausted(f"node has {len(self._entries)} joins waiting; retry later")
            entry = self._entries[key] = _Entry(needed)
        entry.values.update({k: v for k, v in values.items() if k in entry.needed})
        if entry.needed <= entry.values.keys():
            self._entries.pop(key, None)
            entry.done.set()
            return dict(entry.values)
        try:
            await asyncio.wait_for(entry.done.wait(), max(0.0, wait_s))
        except TimeoutError:
            missing = sorted(entry.needed - entry.values.keys())
            if self._entries.get(key) is entry:
                del self._entries[key]
            entry.done.set()  # other waiters give up too
            raise DeadlineExceeded(
                f"request {key[0]}: step {key[1]} waited {wait_s:.1f}s for inputs {missing} that never came"
            ) from None
        finally:
            if not entry.done.is_set() and self._entries.get(key) is entry:
                del self._entries[key]  # cancelled while waiting
        if not entry.needed <= entry.values.keys():
            raise DeadlineExceeded(f"request {key[0]}: step {key[1]} gave up waiting for its inputs")
        return None
