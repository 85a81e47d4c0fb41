"""The trust boundary, tried as a hostile device with live servers: the cluster decides where requests go,
plans belong to the device they were made for, results to their caller, and errors say the truth in a
bounded message (docs/reliability.md, "Trust boundary").

A small live system on real ports (two nodes, an embedded registry, the front-end with its result store).
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch

from splitinfer.codecs import encode_tensor
from splitinfer.errors import FailedPrecondition
from splitinfer.frontend.client import FrontEndClient
from splitinfer.frontend.server import FrontEndConfig, start_frontend
from splitinfer.planner import ServerProfile
from splitinfer.planner.calibration import MeasuredStep
from splitinfer.planner.plan import Plan
from splitinfer.v1 import (
    frontend_pb2,
    frontend_pb2_grpc,
    plan_pb2,
    result_store_pb2,
    result_store_pb2_grpc,
    route_pb2,
    tensor_pb2,
)
from tests.integration._system import MODEL, SmallSystem, small_system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallSystem]:
    with small_system(tmp_path_factory.mktemp("trust"), variants=("fp32",)) as running:
        yield running


def _device(name: str) -> plan_pb2.DeviceState:
    return plan_pb2.DeviceState(device_id=name, compute_flops=0, uplink_mbps=1000, rtt_ms=1)


class CountingListener:
    """A TCP socket that accepts and counts connections: any dial to it is a steered request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._stop = False
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def _forged_header(header: frontend_pb2.InferHeader, plan: plan_pb2.ExecutionPlan) -> frontend_pb2.InferHeader:
    """``header`` plus a device-made plan in field 3, where headers carried plans before plan ids."""
    body = plan.SerializeToString()
    raw = header.SerializeToString() + bytes([3 << 3 | 2]) + _varint(len(body)) + body
    return frontend_pb2.InferHeader.FromString(raw)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _raw_infer(
    address: str, header: frontend_pb2.InferHeader, tensors: list[tensor_pb2.Tensor]
) -> tuple[grpc.StatusCode, str, list[frontend_pb2.InferResponse]]:
    messages = [frontend_pb2.InferRequest(header=header), *(frontend_pb2.InferRequest(tensor=t) for t in tensors)]
    with grpc.insecure_channel(address) as channel:
        try:
            responses = list(frontend_pb2_grpc.FrontEndServiceStub(channel).Infer(iter(messages), timeout=30))
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", []
    return grpc.StatusCode.OK, "", responses


def test_a_device_made_route_or_sink_never_steers_the_cluster(system: SmallSystem) -> None:
    # The front-end is in the registry as a front-end: the one sink nodes accept besides the caller.
    assert system.frontend.address in system.registry.frontends()
    assert system.frontend.address not in system.registry.servers()
    listener = CountingListener()
    try:
        device = _device("steerer")
        with FrontEndClient(system.frontend.address) as client:
            plan = client.plan(MODEL, device)
        assert not plan.HasField("route")  # the device never sees a route
        step = route_pb2.RouteStep(
            partition=route_pb2.PartitionRef(model=MODEL, variant="fp32", partition="p0"),
            addresses=[listener.address],
            fallback_addresses=[listener.address],
            input_names=list(plan.entry_tensors),
            outputs=[route_pb2.TensorRoute(tensor_name=system.output_name, deliver=True)],
        )
        forged = plan_pb2.ExecutionPlan(
            model=MODEL, variant="fp32", route=route_pb2.Route(steps=[step], sink=listener.address)
        )
        tensor = encode_tensor(system.example, system.input_name)
        header = frontend_pb2.InferHeader(request_id="steer-1", device=device, plan_id=plan.plan_id)
        code, _, responses = _raw_infer(system.frontend.address, _forged_header(header, forged), [tensor])
        assert code == grpc.StatusCode.OK and responses[-1].WhichOneof("kind") == "trace"
        # The request ran where the front-end's own plan says, on registered nodes only.
        nodes = {node.address for node in system.nodes}
        assert {s.node for s in responses[-1].trace.steps} <= nodes
        unknown = frontend_pb2.InferHeader(request_id="steer-2", device=device, plan_id="made-up-by-the-device")
        code, _, _ = _raw_infer(system.frontend.address, _forged_header(unknown, forged), [tensor])
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        time.sleep(0.3)
        assert listener.connections == 0
    finally:
        listener.close()


def test_plan_ids_of_another_device_or_expired_are_refused(system: SmallSystem, tmp_path: Path) -> None:
    x = {system.input_name: system.example}
    with FrontEndClient(system.frontend.address) as client:
        mine = client.plan(MODEL, _device("owner"))
        client.infer(mine, _device("owner"), x)  # the owner may use it
        with pytest.raises(FailedPrecondition, match="new plan"):
            client.infer(mine, _device("thief"), x)
    short = start_frontend(
        FrontEndConfig(pool_dir=str(system.pool.root), results_db=str(tmp_path / "r.db"), plan_ttl_s=0.5),
        registry=system.registry,
    )
    try:
        with FrontEndClient(short.address) as client:
            plan = client.plan(MODEL, _device("owner"))
            client.infer(plan, _device("owner"), x)
            time.sleep(0.7)
            with pytest.raises(FailedPrecondition, match="expired"):
                client.infer(plan, _device("owner"), x)
        assert short.metrics.failure_count("FAILED_PRECONDITION", door="frontend", rpc="InferOnce") == 1
    finally:
        short.stop(0.5)


def test_calibration_is_unchanged_by_a_device_that_lies(system: SmallSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    calibration = system.frontend.planner.calibration
    seen: list[tuple[Plan, list[MeasuredStep], str]] = []
    observe = calibration.observe_request

    def spy(plan: Plan, steps: Iterable[MeasuredStep], *, device_id: str) -> int:
        listed = list(steps)
        seen.append((plan, listed, device_id))
        return observe(plan, listed, device_id=device_id)

    monkeypatch.setattr(calibration, "observe_request", spy)
    x = {system.input_name: system.example}

    def factors() -> dict[str, float]:
        out: dict[str, float] = {}
        for node in system.nodes:
            for key, value in calibration.server(ServerProfile(node.address, 1e9)).partition_factors:
                out[f"{node.address}/{key}"] = value
        return out

    with FrontEndClient(system.frontend.address) as client:
        for _ in range(6):
            plan = client.plan(MODEL, _device("honest"))
            client.infer(plan, _device("honest"), x)
    honest = factors()
    assert honest, "the servers' measurements calibrated nothing"
    liar = _device("liar")
    with FrontEndClient(system.frontend.address) as client:
        plan = client.plan(MODEL, liar)
    lie = plan_pb2.ExecutionPlan()
    lie.CopyFrom(plan)
    for placement in lie.placements:
        placement.predicted_ms, placement.base_ms = 1e-9, 1e-9  # "your servers are a billion times slower"
    steps = [
        route_pb2.PartitionRef(model=MODEL, variant="fp32", partition=p.partition.partition) for p in lie.placements
    ]
    tensor = encode_tensor(system.example, system.input_name)
    issued = system.frontend.plans.get(plan.plan_id, "liar", "liar").plan
    seen.clear()
    for i in range(6):
        header = frontend_pb2.InferHeader(request_id=f"lie-{i}", device=liar, plan_id=plan.plan_id)
        for ref in steps:  # and the device "ran" every partition in no time, or in a year
            header.device_steps.add(partition=ref, compute_ms=1e-9 if i % 2 else 3e10)
        code, details, _ = _raw_infer(system.frontend.address, _forged_header(header, lie), [tensor])
        assert code == grpc.StatusCode.OK, details
    # Calibration saw only the front-end's own plan (its base predictions, not the device's), only steps the
    # servers measured (on registered nodes), and nothing the device claimed to have run.
    assert len(seen) == 6
    nodes = {node.address for node in system.nodes}
    for plan_seen, steps_seen, device_id in seen:
        assert plan_seen is issued and device_id == "liar"
        assert all(p.base_ms != 1e-9 for p in plan_seen.placements)
        assert steps_seen and all(step.where in nodes for step in steps_seen)
    after = factors()
    for key, value in honest.items():  # real measurements still move it a little on a busy machine; lies are 1e9
        assert 1 / 30 < after[key] / value < 30, (key, value, after[key])
    from splitinfer.planner import DeviceProfile

    assert not calibration.device("liar", DeviceProfile(1e9, 10.0, 10.0)).partition_factors


def test_another_callers_request_id_is_another_request(system: SmallSystem) -> None:
    a, b = torch.randn_like(system.example), torch.randn_like(system.example)
    with torch.no_grad():
        expected_a, expected_b = system.model(a), system.model(b)
    with FrontEndClient(system.frontend.address) as client:
        plan_a = client.plan(MODEL, _device("alice"))
        plan_b = client.plan(MODEL, _device("bob"))
        out_a, _ = client.infer(plan_a, _device("alice"), {system.input_name: a}, request_id="shared-id")
        out_b, _ = client.infer(plan_b, _device("bob"), {system.input_name: b}, request_id="shared-id")
        # Bob reusing Alice's id gets his own answer, never hers; Alice's retry still gets hers.
        assert torch.allclose(out_b[system.output_name], expected_b, atol=1e-4)
        assert not torch.allclose(out_b[system.output_name], out_a[system.output_name])
        again, _ = client.infer(plan_a, _device("alice"), {system.input_name: a}, request_id="shared-id")
        assert torch.equal(again[system.output_name], out_a[system.output_name])
        assert torch.allclose(out_a[system.output_name], expected_a, atol=1e-4)
        with pytest.raises(FailedPrecondition, match="other inputs"):
            client.infer(plan_a, _device("alice"), {system.input_name: b}, request_id="shared-id")


def test_concurrent_retries_answer_identically_and_store_once(system: SmallSystem) -> None:
    assert system.frontend.store is not None
    before = system.frontend.store.count()
    x = {system.input_name: system.example}
    with FrontEndClient(system.frontend.address) as client:
        plan = client.plan(MODEL, _device("retrier"))

        def attempt(_: int) -> bytes:
            outputs, _trace = client.infer(plan, _device("retrier"), x, request_id="retried-8-times")
            return outputs[system.output_name].numpy().tobytes()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(attempt, range(8)))
    assert len(answers) == 8 and len(set(answers)) == 1
    assert system.frontend.store.count() == before + 1


def test_error_cases_answer_honest_codes_with_bounded_messages(system: SmallSystem) -> None:
    metrics = system.frontend.metrics
    invalid_before = metrics.failure_count("INVALID_ARGUMENT")
    huge = "m" * (1 << 20)
    with grpc.insecure_channel(system.frontend.address) as channel:
        stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Plan(frontend_pb2.PlanRequest(model=huge, device=_device("d")), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(refused.value.details() or "") < 1100
        store = result_store_pb2_grpc.ResultStoreServiceStub(channel)
        for token in (
            base64.urlsafe_b64encode(b'[1e400, "c", "r"]').decode(),
            base64.urlsafe_b64encode(b'[1000000000000000000000000000000, "c", "r"]').decode(),
            base64.urlsafe_b64encode(b'[-5, "c", "r"]').decode(),
            "garbage" * 10_000,
        ):
            with pytest.raises(grpc.RpcError) as refused:
                store.QueryResults(result_store_pb2.QueryResultsRequest(page_token=token), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(refused.value.details() or "") < 300
        # A result with a 4 MiB request id cannot be stored, so QueryResults keeps working for everyone.
        with pytest.raises(grpc.RpcError) as refused:
            store.PutResult(
                result_store_pb2.PutResultRequest(result=result_store_pb2.StoredResult(request_id="r" * (4 << 20))),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert store.QueryResults(result_store_pb2.QueryResultsRequest(), timeout=10).results is not None
    device = _device("careless")
    with FrontEndClient(system.frontend.address) as client:
        plan = client.plan(MODEL, device)
    tensor = encode_tensor(system.example, system.input_name)
    cases = {
        "request id of 4 MiB": frontend_pb2.InferHeader(
            request_id="i" * (4 << 20), device=device, plan_id=plan.plan_id
        ),
        "no plan id": frontend_pb2.InferHeader(request_id="x", device=device),
        "plan id of 1 MiB": frontend_pb2.InferHeader(request_id="x", device=device, plan_id="p" * (1 << 20)),
        "device id of 1 MiB": frontend_pb2.InferHeader(
            request_id="x", device=_device("d" * (1 << 20)), plan_id=plan.plan_id
        ),
    }
    for name, header in cases.items():
        code, details, _ = _raw_infer(system.frontend.address, header, [tensor])
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
        assert len(details) < 1100, name
    assert metrics.failure_count("INVALID_ARGUMENT") >= invalid_before + 1 + len(cases)
    assert metrics.failure_count("INVALID_ARGUMENT", door="frontend", rpc="Infer") >= len(cases)
