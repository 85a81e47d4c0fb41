"""Choosing among replicas of a partition: power of two choices over load, avoiding recent failures.

The load of a replica is the requests this process has outstanding on it plus, when a registry is
available, the in-flight count the replica last reported. Two healthy replicas are drawn at random and
the less loaded one is used (Mitzenmacher's power of two choices: close to least-loaded, without herding).
A replica whose call failed is avoided for ``cooldown_s``; if every replica is cooling down, the one that
failed longest ago is tried rather than failing the request outright.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from splitinfer.errors import Unavailable

__all__ = ["ReplicaBalancer"]


class ReplicaBalancer:
    def __init__(
        self,
        *,
        cooldown_s: float = 5.0,
        reported_load: Callable[[str], float] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cooldown_s = cooldown_s
        self._reported_load = reported_load
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._outstanding: dict[str, int] = {}
        self._failed_at: dict[str, float] = {}

    def load(self, address: str) -> float:
        reported = self._reported_load(address) if self._reported_load else 0.0
        with self._lock:
            return self._outstanding.get(address, 0) + reported

    def _healthy(self, address: str, now: float) -> bool:
        failed = self._failed_at.get(address)
        return failed is None or now - failed >= self._cooldown_s

    def choose(
        self, addresses: Sequence[str], exclude: frozenset[str] = frozenset(), fallbacks: Sequence[str] = ()
    ) -> str:
        """A replica among ``addresses`` not in ``exclude``, by load; once all of them are excluded, the first
        healthy one of ``fallbacks`` (in order)."""
        candidates = [a for a in dict.fromkeys(addresses) if a not in exclude]
        if not candidates:
            spare = [a for a in dict.fromkeys(fallbacks) if a not in exclude]
            if not spare:
                raise Unavailable(f"no replica left to try among {[*addresses, *fallbacks]}")
            now = self._clock()
            with self._lock:
                return next((a for a in spare if self._healthy(a, now)), spare[0])
        now = self._clock()
        with self._lock:
            healthy = [a for a in candidates if self._healthy(a, now)]
            if not healthy:
                return min(candidates, key=lambda a: self._failed_at.get(a, 0.0))
        if len(healthy) == 1:
            return healthy[0]
        a, b = self._rng.sample(healthy, 2)
        return a if self.load(a) <= self.load(b) else b

    @staticmethod
    def untried(addresses: Sequence[str], fallbacks: Sequence[str], tried: set[str]) -> bool:
        """Whether a replica is left to try."""
        return any(a not in tried for a in (*addresses, *fallbacks))

    @contextmanager
    def track(self, address: str) -> Iterator[None]:
        """Counts a call as outstanding on ``address`` while it runs."""
        with self._lock:
            self._outstanding[address] = self._outstanding.get(address, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._outstanding[address] -= 1

    def failed(self, address: str) -> None:
        with self._lock:
            self._failed_at[address] = self._clock()

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failed_at.pop(address, None)
