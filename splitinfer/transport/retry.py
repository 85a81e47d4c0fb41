"""The one replica-retry policy, for the route client (device/front-end -> first node) and the node
forwarder (node -> next node).

A call goes to one replica at a time, chosen by the :class:`~splitinfer.routing.ReplicaBalancer`. Each
attempt gets a budget (:meth:`RetryPolicy.attempt_timeout_s`): with the planned time of what the call runs
(the step and everything after it, ``planned_s``) it is ``planned_factor x planned + planned_slack_s``;
without one, ``unplanned_fraction`` of the time left; the last replica gets all the time left. The budget is
the attempt's gRPC timeout and the ``timeout_ms`` in its header, so a replica that does not answer within it
(hung, SIGSTOPped, overloaded) is abandoned for the next one and its late answer is discarded with the
cancelled call. Retried: Unavailable, ResourceExhausted, and an attempt that ran out of its own budget while
the request still had time. Never retried: InvalidArgument, NotFound, Internal, FailedPrecondition, ... (the
request itself is at fault, another replica would answer the same), nor anything once the deadline passed.

    result = await call_replicas(policy, balancer, step.addresses, step.fallback_addresses, deadline,
                                 planned_s, lambda address, timeout_s: send(address, timeout_s))

:func:`call_replicas_sync` is the same loop for synchronous callers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from splitinfer.errors import DeadlineExceeded, ResourceExhausted, SplitInferError, Unavailable
from splitinfer.routing import ReplicaBalancer
from splitinfer.transport.deadline import Deadline

__all__ = ["RetryPolicy", "call_replicas", "call_replicas_sync"]

log = logging.getLogger("splitinfer.retry")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: Replicas tried at most per call (the first attempt included).
    max_attempts: int = 3
    #: Smallest budget of an attempt that is not the last, seconds.
    min_attempt_s: float = 0.05
    #: An attempt's budget is this many times the planned time of what it runs ...
    planned_factor: float = 3.0
    #: ... plus this, for transfers and queueing, seconds.
    planned_slack_s: float = 0.25
    #: With no planned time, an attempt that is not the last gets this fraction of the time left.
    unplanned_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.unplanned_fraction <= 1:
            raise ValueError(f"unplanned_fraction must be in (0, 1], got {self.unplanned_fraction}")
        if self.min_attempt_s < 0 or self.planned_factor < 1 or self.planned_slack_s < 0:
            raise ValueError("min_attempt_s and planned_slack_s must be >= 0 and planned_factor >= 1")

    def attempt_timeout_s(self, remaining_s: float, planned_s: float | None, others_left: int) -> float:
        """The budget of one attempt when ``others_left`` replicas could still be tried after it."""
        remaining_s = max(0.0, remaining_s)
        if others_left <= 0:
            return remaining_s
        if planned_s is not None and planned_s > 0:
            budget = planned_s * self.planned_factor + self.planned_slack_s
        else:
            budget = remaining_s * self.unplanned_fraction
        return min(remaining_s, max(self.min_attempt_s, budget))


class _AttemptTimedOut(Unavailable):
    """An attempt that ran out of its own budget (not the request's deadline)."""


def _others_left(
    policy: RetryPolicy, addresses: Sequence[str], fallbacks: Sequence[str], tried: set[str], attempts: int
) -> int:
    untried = sum(1 for a in dict.fromkeys((*addresses, *fallbacks)) if a not in tried)
    return min(untried, policy.max_attempts - attempts)


def _classify(exc: BaseException, timeout_s: float, remaining_s: float, address: str) -> SplitInferError | None:
    """The error to remember when ``exc`` is worth another replica; None when it must travel up as is."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError) and not isinstance(exc, DeadlineExceeded):
        return _AttemptTimedOut(f"{address} did not answer within its attempt budget of {timeout_s:.3f}s")
    if isinstance(exc, DeadlineExceeded):
        # The attempt's own budget (shorter than the request's time) ran out: the replica is slow or hung.
        if timeout_s < remaining_s - 1e-3:
            return _AttemptTimedOut(f"{address} did not answer within its attempt budget of {timeout_s:.3f}s")
        return None
    if isinstance(exc, Unavailable | ResourceExhausted):
        return exc
    return None


async def call_replicas(
    policy: RetryPolicy,
    balancer: ReplicaBalancer,
    addresses: Sequence[str],
    fallbacks: Sequence[str],
    deadline: Deadline,
    planned_s: float | None,
    attempt: Callable[[str, float], Awaitable[T]],
    what: str = "call",
) -> T:
    """``await attempt(address, timeout_s)`` on one replica after another until one answers; see the module."""
    tried: set[str] = set()
    attempts = 0
    while True:
        remaining = deadline.check(f"before {what}")
        address = balancer.choose(list(addresses), frozenset(tried), list(fallbacks))
        tried.add(address)
        attempts += 1
        others = _others_left(policy, addresses, fallbacks, tried, attempts)
        timeout_s = policy.attempt_timeout_s(remaining, planned_s, others)
        try:
            with balancer.track(address):
                result = await asyncio.wait_for(attempt(address, timeout_s), timeout_s + 0.05)
        except Exception as exc:
            error = _classify(exc, timeout_s, remaining, address)
            if error is None:
                raise
            balancer.failed(address)
            if others <= 0:
                raise error from None
            if deadline.expired:
                raise DeadlineExceeded(f"request deadline passed during {what}; last: {error}") from None
            log.warning("%s: %s; trying another replica", what, error)
            continue
        balancer.succeeded(address)
        return result


def call_replicas_sync(
    policy: RetryPolicy,
    balancer: ReplicaBalancer,
    addresses: Sequence[str],
    fallbacks: Sequence[str],
    deadline: Deadline,
    planned_s: float | None,
    attempt: Callable[[str, float], T],
    what: str = "call",
) -> T:
    """:func:`call_replicas` for synchronous callers: ``attempt`` must end within ``timeout_s`` itself (pass
    it as the gRPC timeout), raising DeadlineExceeded when it does not."""
    tried: set[str] = set()
    attempts = 0
    while True:
        remaining = deadline.check(f"before {what}")
        address = balancer.choose(list(addresses), frozenset(tried), list(fallbacks))
        tried.add(address)
        attempts += 1
        others = _others_left(policy, addresses, fallbacks, tried, attempts)
        timeout_s = policy.attempt_timeout_s(remaining, planned_s, others)
        try:
            with balancer.track(address):
                result = attempt(address, timeout_s)
        except Exception as exc:
            error = _classify(exc, timeout_s, remaining, address)
            if error is None:
                raise
            balancer.failed(address)
            if others <= 0:
                raise error from None
            if deadline.expired:
                raise DeadlineExceeded(f"request deadline passed during {what}; last: {error}") from None
            log.warning("%s: %s; trying another replica", what, error)
            continue
        balancer.succeeded(address)
        return result
