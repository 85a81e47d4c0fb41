"""Deadlines across hops: what a request has left, clamped, checked at every stage.

gRPC does not carry deadlines across hops by itself, so every header carries ``timeout_ms``, the time left as
the sender saw it. A server turns it into a :class:`Deadline` with :meth:`Deadline.from_header`:

* ``timeout_ms`` 0 means "no deadline" and becomes the configured maximum (``max_s``); anything larger than
  the maximum (2^64-1, 10^13) is clamped to it, so no value a peer can send overflows a timestamp;
* the gRPC deadline of the call, when tighter, wins.

The holder checks it again after compute and before forwarding (:meth:`Deadline.check` raises
DeadlineExceeded naming the stage) and passes :meth:`Deadline.timeout_ms` on to the next hop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from splitinfer.errors import DeadlineExceeded

__all__ = ["DEFAULT_MAX_TIMEOUT_S", "Deadline", "clamp_timeout_s"]

#: Longest a request may run when it names no deadline or a longer one, seconds.
DEFAULT_MAX_TIMEOUT_S = 300.0


def clamp_timeout_s(
    timeout_ms: int, grpc_remaining_s: float | None = None, max_s: float = DEFAULT_MAX_TIMEOUT_S
) -> float:
    """Seconds the request has: ``timeout_ms`` (0: none) and the call's gRPC deadline, at most ``max_s``."""
    candidates = [max_s]
    if timeout_ms > 0:
        candidates.append(min(timeout_ms, int(max_s * 1e3) + 1) / 1e3)
    if grpc_remaining_s is not None:
        candidates.append(max(0.0, grpc_remaining_s))
    return min(candidates)


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point in monotonic time by which a request must be done."""

    at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + max(0.0, seconds), clock)

    @classmethod
    def from_header(
        cls,
        timeout_ms: int,
        grpc_remaining_s: float | None = None,
        max_s: float = DEFAULT_MAX_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> Deadline:
        return cls.after(clamp_timeout_s(timeout_ms, grpc_remaining_s, max_s), clock)

    def remaining_s(self) -> float:
        """Seconds left (0 or less once passed); does not raise."""
        return self.at - self.clock()

    @property
    def expired(self) -> bool:
        return self.remaining_s() <= 0

    def check(self, stage: str = "", *args: object) -> float:
        """Seconds left; DeadlineExceeded naming ``stage`` once the deadline has passed (``stage % args`` when
        ``args`` are given: formatted only then, as this runs several times per request)."""
        left = self.at - self.clock()
        if left <= 0:
            if args:
                stage = stage % args
            where = f" {stage}" if stage else ""
            raise DeadlineExceeded(f"request deadline passed{where}")
        return left

    def timeout_ms(self) -> int:
        """What to put in the next hop's header: at least 1 (0 would mean no deadline)."""
        return max(1, int(self.remaining_s() * 1e3))

    def sooner(self, seconds: float) -> Deadline:
        """The earlier of this deadline and ``seconds`` from now."""
        return Deadline(min(self.at, self.clock() + max(0.0, seconds)), self.clock)
