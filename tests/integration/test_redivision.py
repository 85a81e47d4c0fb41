"""Adaptive division with real servers: the device population shifts, the division controller re-divides the
model, rolls the new division out while requests keep coming (none fails, each one stored), and the new
population's measured latency improves by about what the cost model predicted; a node leaving re-divides onto
the nodes that remain. The devices are emulated at a fixed speed (``splitinfer.testbed.ModelledDevice``) so
that predictions and measurements can be compared on a busy machine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from splitinfer.controller.policy import ControllerConfig
from splitinfer.demo_redivision import (
    CAMERA,
    MODEL,
    PHONE,
    REQUIREMENTS,
    VARIANT,
    RedivisionSystem,
    redivision_system,
)
from splitinfer.results.store import ResultQuery
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc


def _config(**changes: object) -> ControllerConfig:
    base = {"models": (f"{MODEL}@{VARIANT}",), "min_requests": 10, "min_interval_s": 5.0, "drain_s": 3.0,
            "drain_timeout_s": 10.0, "onnx": True}  # fmt: skip
    return ControllerConfig(**{**base, **changes})  # type: ignore[arg-type]


@pytest.fixture
def system(tmp_path: Path) -> Iterator[RedivisionSystem]:
    with redivision_system(tmp_path, _config()) as running:
        yield running


def _status(system: RedivisionSystem) -> frontend_pb2.GetFrontEndStatusResponse:
    with grpc.insecure_channel(system.frontend.address) as channel:
        stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
        return stub.GetFrontEndStatus(frontend_pb2.GetFrontEndStatusRequest(), timeout=10)


def _stored_everything(system: RedivisionSystem, request_ids: list[str]) -> None:
    """Every request the phones sent during the rollout has its result in the store, once."""
    store = system.frontend.store
    assert store is not None
    stored: list[str] = []
    token = ""
    while True:
        page, token = store.query(ResultQuery(model=MODEL, page_size=500, page_token=token))
        stored += [r.request_id for r in page]
        if not token:
            break
    missing = [r for r in request_ids if r not in stored]
    assert not missing, f"{len(missing)} accepted requests have no stored result"
    assert len(stored) == len(set(stored))


class Traffic:
    """Phones sending requests from a thread while the controller works: every request must succeed."""

    def __init__(self, system: RedivisionSystem) -> None:
        self.system, self.ids, self.failures = system, [], []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        agent = self.system.agent(PHONE, 1)
        while not self._stop.is_set():
            try:
                answer = agent.infer(MODEL, {"x": self.system.example}, REQUIREMENTS)
            except Exception as exc:  # what the test is about: nothing may fail during a rollout
                self.failures.append(repr(exc))
                continue
            if answer.device_only_fallback:
                self.failures.append(f"fell back to the device: {answer.reason}")
            elif answer.plan_id:  # it ran on the servers (a device-only answer names no plan id)
                self.ids.append(answer.request_id)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_a_population_shift_is_followed_by_a_live_re_division_that_pays_off(system: RedivisionSystem) -> None:
    controller, state = system.controller, system.controller.states[f"{MODEL}@{VARIANT}"]
    cameras = system.traffic(CAMERA, 12)
    assert cameras.failures == 0
    controller.step()
    assert state.version == 1 and state.last_evaluation.startswith("kept"), state.last_evaluation
    status = _status(system)
    assert {a.device_class for a in status.activity} == {"camera"} and status.divisions[0].version == 1

    before = system.traffic(PHONE, 15)
    assert before.failures == 0
    with Traffic(system) as traffic:  # requests in flight through the rollout
        started = time.monotonic()
        controller.step()
        assert state.version == 2, state.last_evaluation
        switched_s = time.monotonic() - started
        assert "request mix moved" in state.reason and state.predicted_gain >= controller.config.adopt_margin
        time.sleep(1.0)
        assert not traffic.failures
        while "done" not in state.rollout:  # drain, then the old partitions go
            assert time.monotonic() - started < 60, state.rollout
            time.sleep(0.5)
            controller.step()
        time.sleep(1.0)
    assert not traffic.failures, traffic.failures[:3]
    assert traffic.ids, "the phones' requests ran on the servers during the rollout"
    _stored_everything(system, traffic.ids)

    after = system.traffic(PHONE, 15)
    assert after.failures == 0 and all("v2-" in plan for plan in after.plans), after.plans
    hosted = {key for record in system.registry.servers().values() for key in record.partitions}
    assert hosted and all("/v2-" in key for key in hosted), "old partitions unloaded once drained"

    predicted_before, predicted_after = state.history[-1]["predicted_by_class"]["phone"]
    predicted_gain_ms = predicted_before - predicted_after
    measured_gain_ms = before.median_ms - after.median_ms
    print(
        f"phones: measured {before.median_ms:.1f} -> {after.median_ms:.1f} ms (median, {measured_gain_ms:.1f} ms), "
        f"predicted {predicted_before:.1f} -> {predicted_after:.1f} ms; switched in {switched_s:.2f} s; "
        f"plans {before.plans} -> {after.plans}"
    )
    assert after.median_ms < before.median_ms and predicted_gain_ms > 0
    # How close the measured gain comes to the predicted one is a speed figure: benchmarks/redivision.py
    # reports it against its 0.5x-2.5x target (on a loaded 2-core machine it drifts out of any fixed range).

    status = _status(system)
    (division,) = status.divisions
    assert division.version == 2 and "request mix moved" in division.reason and "done" in division.rollout


def test_a_node_leaving_re_divides_onto_the_nodes_that_remain(system: RedivisionSystem) -> None:
    controller, state = system.controller, system.controller.states[f"{MODEL}@{VARIANT}"]
    assert system.traffic(CAMERA, 10).failures == 0
    controller.step()
    leaving = system.nodes[1]
    leaving.stop(0.5)
    deadline = time.monotonic() + 15
    while leaving.address in system.registry.servers():
        assert time.monotonic() < deadline, "the stopped node did not leave the registry"
        time.sleep(0.1)
    controller.step()
    assert state.version == 2 and "not served" in state.reason, state.last_evaluation
    remaining = system.nodes[0].address
    new = system.pool.division(system.pool.resolve(MODEL, VARIANT, "default"))
    assert {p.host for p in new.partitions} <= {remaining, "device"}
    cameras = system.traffic(CAMERA, 5)
    assert cameras.failures == 0 and all("v2-" in plan for plan in cameras.plans), cameras.plans
