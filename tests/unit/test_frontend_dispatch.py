"""The one request path both front doors share: results owned by their caller, one run for concurrent
retries, routes only to registered servers, calibration only from measurements."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from splitinfer.codecs import WireTensor, encode_tensor
from splitinfer.errors import FailedPrecondition, InvalidArgument
from splitinfer.frontend.dispatch import Dispatcher, Job
from splitinfer.frontend.plans import PlanBook
from splitinfer.planner.calibration import Calibration
from splitinfer.planner.plan import Placement, Plan
from splitinfer.registry import EmbeddedRegistry, ServerRecord
from splitinfer.results import ResultStore
from splitinfer.results.client import LocalResults
from splitinfer.v1 import frontend_pb2, model_server_pb2, route_pb2, tensor_pb2

A, B, STRANGER = "10.0.0.1:50051", "10.0.0.2:50051", "10.9.9.9:6666"


class FakeRoutes:
    """Stands in for the RouteClient: records what it was asked to run, answers x + 1 after a while."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.runs: list[route_pb2.Route] = []
        self._lock = threading.Lock()

    def run(
        self, route: route_pb2.Route, inputs: Mapping[str, tensor_pb2.Tensor], *, request_id: str, timeout_s: float
    ) -> tuple[dict[str, tensor_pb2.Tensor], list[model_server_pb2.StepTiming]]:
        with self._lock:
            self.runs.append(route)
            count = len(self.runs)
        time.sleep(self.delay_s)
        out = encode_tensor(torch.full((2,), float(count)), "out")
        timing = model_server_pb2.StepTiming(partition=route.steps[0].partition, node=route.steps[0].addresses[0])
        timing.compute_ms = 4.0
        return {"out": out}, [timing]


def _plan(addresses: list[str], fallbacks: list[str] = ()) -> Plan:  # type: ignore[assignment]
    step = route_pb2.RouteStep(
        partition=route_pb2.PartitionRef(model="m", variant="fp32", partition="p1"),
        addresses=addresses,
        fallback_addresses=list(fallbacks),
        input_names=["x"],
        outputs=[route_pb2.TensorRoute(tensor_name="out", deliver=True)],
    )
    route = route_pb2.Route(steps=[step], sink=STRANGER)
    placements = (Placement("p1", addresses[0], 2.0, base_ms=2.0),)
    return Plan("m", "fp32", placements, (), 5.0, 0.0, 0.9, "test", "test", route=route)


@pytest.fixture
def parts(tmp_path: Path):  # type: ignore[no-untyped-def]
    registry = EmbeddedRegistry()
    for address in (A, B):
        registry.register(ServerRecord(address, partitions=("m@fp32/p1",)), ttl_s=600)
    routes = FakeRoutes()
    store = ResultStore(tmp_path / "results.db")
    calibration = Calibration()
    dispatcher = Dispatcher(registry, routes, LocalResults(store), calibration)  # type: ignore[arg-type]
    yield dispatcher, routes, store, calibration, PlanBook()
    store.close()


def _job(book: PlanBook, plan: Plan, caller: str, request_id: str, value: float, **kw: object) -> Job:
    issued = book.issue(plan, caller, caller)
    x = encode_tensor(torch.full((2,), value), "x")
    return Job(caller=caller, request_id=request_id, issued=issued, tensors={"x": x}, timeout_s=5.0, **kw)  # type: ignore[arg-type]


def test_a_retry_gets_the_stored_result_and_other_inputs_are_refused(parts) -> None:  # type: ignore[no-untyped-def]
    dispatcher, routes, store, _, book = parts
    first = dispatcher.run(_job(book, _plan([A]), "alice", "r1", 1.0))
    again = dispatcher.run(_job(book, _plan([A]), "alice", "r1", 1.0))
    assert len(routes.runs) == 1 and again.recalled
    assert again.outputs[0].payload == first.outputs[0].payload
    with pytest.raises(FailedPrecondition, match="other inputs"):
        dispatcher.run(_job(book, _plan([A]), "alice", "r1", 2.0))
    # Another caller's id is another request: it runs, and never sees alice's outputs.
    theirs = dispatcher.run(_job(book, _plan([A]), "bob", "r1", 1.0))
    assert not theirs.recalled and len(routes.runs) == 2
    assert theirs.outputs[0].payload != first.outputs[0].payload
    assert store.count() == 2


def test_concurrent_retries_run_once_and_answer_identically(parts) -> None:  # type: ignore[no-untyped-def]
    dispatcher, routes, store, _, book = parts
    routes.delay_s = 0.3
    answers: list[bytes] = []
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            answers.append(dispatcher.run(_job(book, _plan([A]), "alice", "same", 1.0)).outputs[0].payload)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(answers) == 8 and len(set(answers)) == 1
    assert len(routes.runs) == 1 and store.count() == 1


def test_routes_go_only_to_registered_hosts_and_never_to_a_sink(parts) -> None:  # type: ignore[no-untyped-def]
    dispatcher, routes, _, _, book = parts
    dispatcher.run(_job(book, _plan([STRANGER, A], [B, STRANGER]), "alice", "r1", 1.0))
    sent = routes.runs[-1]
    assert list(sent.steps[0].addresses) == [A] and list(sent.steps[0].fallback_addresses) == [B]
    assert sent.sink == ""
    dispatcher.run(_job(book, _plan([STRANGER], [B]), "alice", "r2", 1.0))
    assert list(routes.runs[-1].steps[0].addresses) == [B]  # a registered fallback steps up
    with pytest.raises(FailedPrecondition, match="new plan"):
        dispatcher.run(_job(book, _plan([STRANGER]), "alice", "r3", 1.0))
    assert all(STRANGER not in list(r.steps[0].addresses) + list(r.steps[0].fallback_addresses) for r in routes.runs)


def test_the_tensors_sent_must_be_the_entry_tensors(parts) -> None:  # type: ignore[no-untyped-def]
    dispatcher, routes, _, _, book = parts
    job = _job(book, _plan([A]), "alice", "r1", 1.0)
    extra = dict(job.tensors, y=encode_tensor(torch.zeros(1), "y"))
    with pytest.raises(InvalidArgument, match="not read"):
        dispatcher.run(Job(job.caller, job.request_id, job.issued, extra, job.timeout_s))
    with pytest.raises(InvalidArgument, match="missing"):
        dispatcher.run(Job(job.caller, job.request_id, job.issued, {}, job.timeout_s))
    assert not routes.runs


def test_calibration_learns_from_measurements_not_from_the_device(parts) -> None:  # type: ignore[no-untyped-def]
    from splitinfer.planner import DeviceProfile, ServerProfile

    dispatcher, _, _, calibration, book = parts
    lies = [
        model_server_pb2.StepTiming(partition=route_pb2.PartitionRef(model="m", variant="fp32", partition="p1"),
                                    compute_ms=1e-9),  # a server partition claimed by the device
        model_server_pb2.StepTiming(partition=route_pb2.PartitionRef(model="m", variant="fp32", partition="p0"),
                                    compute_ms=float("inf")),
    ]  # fmt: skip
    for i in range(5):
        dispatcher.run(_job(book, _plan([A]), "alice", f"r{i}", 1.0, device_steps=lies * 100))
    server = calibration.server(ServerProfile(A, 1e9))
    assert dict(server.partition_factors)["m@fp32/p1"] == pytest.approx(2.0, rel=0.05)  # measured 4 / base 2
    device = calibration.device("alice", DeviceProfile(1e9, 10.0, 10.0))
    assert not device.partition_factors  # nothing the device claimed was believed


def test_a_device_that_runs_alone_calibrates_through_its_plan_calls(tmp_path: Path) -> None:
    """Device-only plans send no Infer: their step times come with the next Plan call and are learnt from
    only for partitions a plan of this front-end put on that caller's device."""
    from splitinfer.planner import DeviceProfile

    registry = EmbeddedRegistry()
    calibration, book = Calibration(), PlanBook()
    dispatcher = Dispatcher(registry, FakeRoutes(), None, calibration, book)  # type: ignore[arg-type]
    local = Plan("m", "fp32", (Placement("p0", "device", 2.0, base_ms=2.0),), (), 2.0, 0.0, 0.9, "test", "test")
    book.issue(local, "alice", "alice-phone")

    def step(partition: str, ms: float) -> model_server_pb2.StepTiming:
        ref = route_pb2.PartitionRef(model="m", variant="fp32", partition=partition)
        return model_server_pb2.StepTiming(partition=ref, compute_ms=ms)

    for _ in range(5):
        dispatcher.learn_device_steps("alice", "alice-phone", [step("p0", 8.0), step("p9", 0.001)])
    device = calibration.device("alice-phone", DeviceProfile(1e9, 10.0, 10.0))
    assert dict(device.partition_factors)["m@fp32/p0"] == pytest.approx(4.0, rel=0.05)  # measured 8 / base 2
    assert "m@fp32/p9" not in dict(device.partition_factors)  # no plan put p9 on the device
    dispatcher.learn_device_steps("mallory", "mallory-phone", [step("p0", 0.001)] * 10)
    assert not calibration.device("mallory-phone", DeviceProfile(1e9, 10.0, 10.0)).partition_factors


def _report(
    plan_id: str, request_id: str, inference_ms: float, *steps: tuple[str, float]
) -> frontend_pb2.RequestReport:
    timings = [
        model_server_pb2.StepTiming(
            partition=route_pb2.PartitionRef(model="m", variant="fp32", partition=p), compute_ms=ms
        )
        for p, ms in steps
    ]
    return frontend_pb2.RequestReport(
        request_id=request_id, plan_id=plan_id, inference_ms=inference_ms, device_steps=timings
    )


def test_request_reports_teach_the_overhead_of_their_own_plans_only(tmp_path: Path) -> None:
    """A device's report of a finished request (its total, cold costs excluded) less the servers' own timings
    of that request teaches that device's per-request overhead; reports naming someone else's plan, totals
    below what the servers measured and requests this front-end never ran teach nothing."""
    from splitinfer.planner import DeviceProfile

    registry = EmbeddedRegistry()
    registry.register(ServerRecord(A, partitions=("m@fp32/p1",)), ttl_s=600)
    calibration, book = Calibration(), PlanBook()
    dispatcher = Dispatcher(registry, FakeRoutes(), None, calibration, book)  # type: ignore[arg-type]
    profile = DeviceProfile(1e9, 10.0, 10.0)
    jobs = [_job(book, _plan([A]), "alice", f"r{i}", 1.0) for i in range(5)]
    for job in jobs:
        dispatcher.run(job)  # the servers measured 4 ms of compute for each
    # Lies first: another caller naming alice's plans, a total below the measured compute, an unknown request.
    dispatcher.learn_reports("mallory", "mallory", [_report(j.issued.plan_id, j.request_id, 900.0) for j in jobs])
    dispatcher.learn_reports("alice", "alice", [_report(jobs[0].issued.plan_id, jobs[0].request_id, 1.0)])
    dispatcher.learn_reports("alice", "alice", [_report(jobs[1].issued.plan_id, "never-ran", 900.0)])
    assert calibration.device("alice", profile).offload_overhead_ms == 0.0
    assert calibration.device("mallory", profile).offload_overhead_ms == 0.0
    dispatcher.learn_reports("alice", "alice", [_report(j.issued.plan_id, j.request_id, 10.0) for j in jobs[1:]])
    assert calibration.device("alice", profile).offload_overhead_ms == pytest.approx(6.0, abs=0.5)  # 10 - 4

    # A device-only plan: the total less the device's own steps is the local overhead.
    local = Plan("m", "fp32", (Placement("p0", "device", 2.0, base_ms=2.0),), (), 2.0, 0.0, 0.9, "test", "test")
    issued = book.issue(local, "alice", "alice")
    dispatcher.learn_reports("alice", "alice", [_report(issued.plan_id, f"l{i}", 11.0, ("p0", 8.0)) for i in range(3)])
    device = calibration.device("alice", profile)
    assert device.local_overhead_ms == pytest.approx(3.0, abs=0.5)
    assert dict(device.partition_factors)["m@fp32/p0"] == pytest.approx(4.0, rel=0.05)  # 8 / base 2


class FakeAsyncRoutes:
    """Stands in for the AsyncRouteClient: what FakeRoutes does, awaited on the loop, answering WireTensors."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.runs: list[route_pb2.Route] = []

    async def run(
        self, route: route_pb2.Route, inputs: Mapping[str, tensor_pb2.Tensor], *, request_id: str, timeout_s: float
    ) -> tuple[dict[str, WireTensor], list[model_server_pb2.StepTiming]]:
        self.runs.append(route)
        count = len(self.runs)
        await asyncio.sleep(self.delay_s)
        out = WireTensor.from_message(encode_tensor(torch.full((2,), float(count)), "out"))
        timing = model_server_pb2.StepTiming(partition=route.steps[0].partition, node=route.steps[0].addresses[0])
        timing.compute_ms = 4.0
        return {"out": out}, [timing]


def test_the_event_loop_path_keeps_every_check_of_the_threaded_one(tmp_path: Path) -> None:
    """run_async (the FrontEndService door's path): registered hosts only and no sink, entry tensors checked,
    stored under the caller's id, a retry recalled, other inputs refused, concurrent tries run once, and the
    servers' timings calibrate."""
    from splitinfer.planner import ServerProfile

    registry = EmbeddedRegistry()
    for address in (A, B):
        registry.register(ServerRecord(address, partitions=("m@fp32/p1",)), ttl_s=600)
    store = ResultStore(tmp_path / "results.db")
    calibration, book, aroutes = Calibration(), PlanBook(), FakeAsyncRoutes()
    routes: Any = FakeRoutes()
    dispatcher = Dispatcher(registry, routes, LocalResults(store), calibration, book, aroutes=aroutes)  # type: ignore[arg-type]

    async def scenario() -> None:
        first = await dispatcher.run_async(_job(book, _plan([STRANGER, A], [B]), "alice", "r1", 1.0))
        assert list(aroutes.runs[0].steps[0].addresses) == [A] and aroutes.runs[0].sink == ""
        assert first.outputs[0].name == "out" and not first.recalled
        again = await dispatcher.run_async(_job(book, _plan([A]), "alice", "r1", 1.0))
        assert again.recalled and again.outputs[0].payload == first.outputs[0].payload and len(aroutes.runs) == 1
        with pytest.raises(FailedPrecondition, match="other inputs"):
            await dispatcher.run_async(_job(book, _plan([A]), "alice", "r1", 2.0))
        job = _job(book, _plan([A]), "alice", "r2", 1.0)
        with pytest.raises(InvalidArgument, match="not read"):
            extra = dict(job.tensors, y=encode_tensor(torch.zeros(1), "y"))
            await dispatcher.run_async(Job(job.caller, job.request_id, job.issued, extra, job.timeout_s))
        with pytest.raises(FailedPrecondition, match="new plan"):
            await dispatcher.run_async(_job(book, _plan([STRANGER]), "alice", "r3", 1.0))
        aroutes.delay_s = 0.2
        answers = await asyncio.gather(
            *(dispatcher.run_async(_job(book, _plan([A]), "alice", "same", 1.0)) for _ in range(6))
        )
        assert len({a.outputs[0].payload for a in answers}) == 1 and sum(not a.recalled for a in answers) == 1
        aroutes.delay_s = 0.0
        for i in range(4):
            await dispatcher.run_async(_job(book, _plan([A]), "alice", f"c{i}", 1.0))

    try:
        asyncio.run(scenario())
        assert len(aroutes.runs) == 6 and store.count() == 6  # r1, same, c0..c3
        assert store.get("r1", "alice").model == "m" and store.count() == 6
        server = calibration.server(ServerProfile(A, 1e9))
        assert dict(server.partition_factors)["m@fp32/p1"] == pytest.approx(2.0, rel=0.05)  # measured 4 / base 2
    finally:
        store.close()
