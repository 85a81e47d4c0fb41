"""The registry interface and the client-side cache both backends share.

A server registers a :class:`ServerRecord` under a lease of ``ttl_s`` seconds and keeps it alive; when it
stops renewing (it died, or lost the network), the record disappears within the TTL. Clients read a local
cache kept current by watches, with a partition -> replicas index and a version that changes on every
update (the Planner keys its plan cache on it). Records carry a role: ``servers()`` and ``replicas()`` list
server nodes only (what the planner places partitions on); ``frontends()`` lists the front-ends, which nodes
accept as sinks of the routes they run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from splitinfer.registry.record import FRONTEND, NODE, ServerRecord

__all__ = ["Registration", "Registry", "RegistryCache"]


class Registration(Protocol):
    """A server's live entry: update it with fresh status; close it to leave the registry."""

    def update(self, record: ServerRecord) -> None: ...

    def close(self) -> None: ...


class Registry(Protocol):
    def register(self, record: ServerRecord, ttl_s: float) -> Registration: ...

    def servers(self) -> dict[str, ServerRecord]:
        """Live server nodes (role NODE) by address, from the local cache."""
        ...

    def frontends(self) -> dict[str, ServerRecord]:
        """Live front-ends (role FRONTEND) by address, from the local cache."""
        ...

    def replicas(self, partition: str) -> list[ServerRecord]:
        """Live servers hosting a partition ("model@variant/partition")."""
        ...

    @property
    def version(self) -> int:
        """Changes whenever the set of servers or their records change."""
        ...

    def subscribe(self, callback: Callable[[int], None]) -> None:
        """Calls ``callback(version)`` after every change."""
        ...

    def close(self) -> None: ...


class RegistryCache:
    """Thread-safe map of live records with a partition index; backends feed it puts and deletes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, ServerRecord] = {}
        self._index: dict[str, list[str]] = {}
        self._version = 0
        self._subscribers: list[Callable[[int], None]] = []

    def _reindex(self) -> None:
        index: dict[str, list[str]] = {}
        for address, record in sorted(self._records.items()):
            if record.role != NODE:
                continue
            for partition in record.partitions:
                index.setdefault(partition, []).append(address)
        self._index = index
        self._version += 1

    def _notify(self, version: int) -> None:
        for callback in list(self._subscribers):
            callback(version)

    def put(self, record: ServerRecord) -> None:
        with self._lock:
            self._records[record.address] = record
            self._reindex()
            version = self._version
        self._notify(version)

    def delete(self, address: str) -> None:
        with self._lock:
            if self._records.pop(address, None) is None:
                return
            self._reindex()
            version = self._version
        self._notify(version)

    def replace_all(self, records: list[ServerRecord]) -> None:
        with self._lock:
            self._records = {r.address: r for r in records}
            self._reindex()
            version = self._version
        self._notify(version)

    def servers(self) -> dict[str, ServerRecord]:
        with self._lock:
            return {a: r for a, r in self._records.items() if r.role == NODE}

    def frontends(self) -> dict[str, ServerRecord]:
        with self._lock:
            return {a: r for a, r in self._records.items() if r.role == FRONTEND}

    def replicas(self, partition: str) -> list[ServerRecord]:
        with self._lock:
            return [self._records[a] for a in self._index.get(partition, [])]

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def subscribe(self, callback: Callable[[int], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)
