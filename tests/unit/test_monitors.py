"""The uplink estimator: smooth under noise, immediate on a step."""

from __future__ import annotations

import pytest

from edge_agent.monitors import NetworkEstimator


def test_noise_is_averaged() -> None:
    estimator = NetworkEstimator(initial_uplink_mbps=10.0)
    estimator.observe_transfer(1_000_000, 8 / 12)  # 12 Mbps observed: within 2x, averaged
    assert 10.0 < estimator.uplink_mbps < 12.0


@pytest.mark.parametrize("observed_mbps", [1.1, 50.0])
def test_a_step_is_followed_at_once(observed_mbps: float) -> None:
    estimator = NetworkEstimator(initial_uplink_mbps=18.88)
    estimator.observe_transfer(100_000, 100_000 * 8 / (observed_mbps * 1e6))
    assert estimator.uplink_mbps == pytest.approx(observed_mbps)


def test_small_transfers_say_nothing() -> None:
    estimator = NetworkEstimator(initial_uplink_mbps=10.0)
    estimator.observe_transfer(1000, 10.0)
    assert estimator.uplink_mbps == 10.0
