"""Replica choice: least loaded of two, failed replicas avoided, then retried after the cooldown."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from splitinfer.errors import Unavailable
from splitinfer.routing import ReplicaBalancer


def test_power_of_two_prefers_the_less_loaded_replica() -> None:
    reported = {"a": 10.0, "b": 0.0}
    balancer = ReplicaBalancer(reported_load=lambda addr: reported[addr], rng=random.Random(0))
    assert Counter(balancer.choose(["a", "b"]) for _ in range(50)) == Counter({"b": 50})


def test_outstanding_calls_count_as_load() -> None:
    balancer = ReplicaBalancer(rng=random.Random(1))
    with balancer.track("a"), balancer.track("a"):
        assert balancer.choose(["a", "b"]) == "b"
    picks = Counter(balancer.choose(["a", "b", "c"]) for _ in range(300))
    assert set(picks) == {"a", "b", "c"}  # equal load: spread, no herding onto one


def test_failed_replica_is_avoided_until_cooldown() -> None:
    now = [0.0]
    balancer = ReplicaBalancer(cooldown_s=5, clock=lambda: now[0], rng=random.Random(2))
    balancer.failed("a")
    assert {balancer.choose(["a", "b"]) for _ in range(20)} == {"b"}
    now[0] = 6.0
    assert "a" in {balancer.choose(["a", "b"]) for _ in range(50)}


def test_all_failed_tries_the_oldest_failure_and_exclusion_can_exhaust() -> None:
    now = [0.0]
    balancer = ReplicaBalancer(cooldown_s=5, clock=lambda: now[0])
    balancer.failed("a")
    now[0] = 1.0
    balancer.failed("b")
    assert balancer.choose(["a", "b"]) == "a"
    with pytest.raises(Unavailable, match="no replica"):
        balancer.choose(["a", "b"], exclude=frozenset({"a", "b"}))
