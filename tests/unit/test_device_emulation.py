"""Device emulation lives in the testbed and reaches the agent through its hook; the agent never sleeps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edge_agent
from edge_agent.monitors import NetworkEstimator
from splitinfer import testbed
from splitinfer.testbed import EmulatedDevice


def test_an_emulated_device_is_slower_and_its_link_takes_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(testbed.time, "sleep", slept.append)
    network = NetworkEstimator()
    device = EmulatedDevice(5.0, network)
    device.after_run("p0", 0.01)
    assert slept == [pytest.approx(0.04)]  # 5x as long in all
    assert device.reported_flops(1e9) == pytest.approx(2e8)
    device.before_send(1_000_000)
    assert len(slept) == 1  # no emulated link: nothing to wait for
    network.emulated_uplink_mbps = 8.0
    device.before_send(1_000_000)  # 8 Mbit over 8 Mbps, plus half the RTT
    assert slept[-1] == pytest.approx(1.0 + network.rtt_ms / 2e3)
    with pytest.raises(ValueError):
        EmulatedDevice(0.5, network)


def test_the_agent_code_never_sleeps_to_emulate() -> None:
    for path in Path(edge_agent.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sleep":
                raise AssertionError(f"{path.name}:{node.lineno} sleeps; emulation belongs in splitinfer.testbed")
