"""The in-process registry: the same interface as etcd, for one machine and for unit tests.

Leases expire by a clock that tests can replace, so TTL behaviour is tested without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from splitinfer.registry.base import RegistryCache
from splitinfer.registry.record import ServerRecord

__all__ = ["EmbeddedRegistry"]


class _EmbeddedRegistration:
    def __init__(self, registry: EmbeddedRegistry, address: str) -> None:
        self._registry = registry
        self._address = address

    def update(self, record: ServerRecord) -> None:
        self._registry._put(record, renew=True)

    def keepalive(self) -> None:
        """Renews the lease without changing the record."""
        self._registry._renew(self._address)

    def close(self) -> None:
        self._registry._remove(self._address)


class EmbeddedRegistry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cache = RegistryCache()
        self._lock = threading.Lock()
        self._expiry: dict[str, tuple[float, float]] = {}  # address -> (deadline, ttl)

    def register(self, record: ServerRecord, ttl_s: float) -> _EmbeddedRegistration:
        with self._lock:
            self._expiry[record.address] = (self._clock() + ttl_s, ttl_s)
        self._cache.put(record)
        return _EmbeddedRegistration(self, record.address)

    def _put(self, record: ServerRecord, renew: bool) -> None:
        with self._lock:
            if record.address not in self._expiry:
                return  # expired: the server must register again
            deadline, ttl = self._expiry[record.address]
            self._expiry[record.address] = (self._clock() + ttl if renew else deadline, ttl)
        self._cache.put(record)

    def _renew(self, address: str) -> None:
        with self._lock:
            if address in self._expiry:
                _, ttl = self._expiry[address]
                self._expiry[address] = (self._clock() + ttl, ttl)

    def _remove(self, address: str) -> None:
        with self._lock:
            self._expiry.pop(address, None)
        self._cache.delete(address)

    def expire(self) -> None:
        """Drops records whose lease ran out (called on every read)."""
        now = self._clock()
        with self._lock:
            dead = [a for a, (deadline, _) in self._expiry.items() if deadline <= now]
            for address in dead:
                del self._expiry[address]
        for address in dead:
            self._cache.delete(address)

    def servers(self) -> dict[str, ServerRecord]:
        self.expire()
        return self._cache.servers()

    def frontends(self) -> dict[str, ServerRecord]:
        self.expire()
        return self._cache.frontends()

    def replicas(self, partition: str) -> list[ServerRecord]:
        self.expire()
        return self._cache.replicas(partition)

    @property
    def version(self) -> int:
        self.expire()
        return self._cache.version

    def subscribe(self, callback: Callable[[int], None]) -> None:
        self._cache.subscribe(callback)

    def close(self) -> None:
        pass
