"""An attack on this session's data-plane changes (issues #13, #15), as a hostile or careless client would.

The front-end now runs requests on its event loop (``Dispatcher.run_async``) with a unary ``InferOnce``; the
nodes take and give admission slots and memory budget by hand (``PartitionHost.enter/leave``,
``MemoryBudget.take/give``) and hop up to ``HOP_ONCE_MAX_BYTES`` (16 MiB) as one ``ProcessOnce``. Real servers
on port 0 (in-process nodes and front-ends, so a test can read their in-flight counts and budgets; a hung
replica is a node whose event loop is blocked, as a SIGSTOP would leave it).

The tests after "Found by this attack" were strict xfails naming four bugs (same-id tries starving the
front-end's workers, a retry inheriting a given-up first try's failure, hops over a node's message limit,
InferOnce answers too large for one message); they pass since the fixes. The others are properties that
held from the start and must keep holding.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from torch import nn

from server_node.config import NodeConfig
from server_node.server import RunningNode, start_node
from splitinfer.codecs import TensorAssembler, WireTensor, decode_tensor, encode_tensor
from splitinfer.divider import partition_at
from splitinfer.errors import ResourceExhausted, SplitInferError
from splitinfer.frontend.server import FrontEndConfig, RunningFrontEnd, start_frontend
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.registry import EmbeddedRegistry
from splitinfer.routing import build_route
from splitinfer.runtime import PartitionKey
from splitinfer.transport import frames
from splitinfer.transport.aio_server import StreamLimiter
from splitinfer.transport.clients import NodeClient
from splitinfer.transport.stream import ONCE_ANSWER_TOO_LARGE, ONCE_MAX_BYTES
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, model_server_pb2, route_pb2, tensor_pb2
from tests.integration._system import MODEL, SmallSystem, small_system
from tests.integration.test_data_plane import _save
from tests.integration.test_trust_boundary import _device

pytestmark = pytest.mark.timeout(120)

#: Longest status message a refusal may carry (the developers' guide: bounded messages).
MAX_DETAILS = 1024


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallSystem]:
    with small_system(tmp_path_factory.mktemp("attack"), variants=("fp32",)) as running:
        yield running


class Door:
    """InferOnce against one front-end as device ``device``, answering (code, details, seconds)."""

    def __init__(self, frontend: RunningFrontEnd, device: str) -> None:
        self.device = device
        self.channel = grpc.insecure_channel(frontend.address)
        self.stub = frontend_pb2_grpc.FrontEndServiceStub(self.channel)
        self.plan = self.stub.Plan(frontend_pb2.PlanRequest(model=MODEL, device=_device(device)), timeout=30).plan
        assert list(self.plan.entry_tensors), "the plan must use the servers"

    def header(self, request_id: str, timeout_ms: int = 10_000, **fields: object) -> frontend_pb2.InferHeader:
        values: dict[str, object] = {"device": _device(self.device), "plan_id": self.plan.plan_id, **fields}
        return frontend_pb2.InferHeader(request_id=request_id, timeout_ms=timeout_ms, **values)  # type: ignore[arg-type]

    def once(
        self, header: frontend_pb2.InferHeader | None, tensors: list[tensor_pb2.Tensor], client_timeout_s: float = 20
    ) -> tuple[grpc.StatusCode, str, float]:
        start = time.monotonic()
        try:
            self.stub.InferOnce(frontend_pb2.InferOnceRequest(header=header, tensors=tensors), timeout=client_timeout_s)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", time.monotonic() - start
        return grpc.StatusCode.OK, "", time.monotonic() - start

    def close(self) -> None:
        self.channel.close()


def _hang(nodes: list[RunningNode], seconds: float) -> None:
    """Every node stops answering for ``seconds`` (its event loop is blocked, as a SIGSTOPped process)."""
    for node in nodes:
        node.loop.call_soon_threadsafe(time.sleep, seconds)


def _settled(nodes: list[RunningNode], timeout_s: float = 5.0) -> tuple[list[int], list[int]]:
    """The nodes' requests in flight and budget bytes in use, once they stop moving (or at ``timeout_s``).
    A request counts in flight while either its admission slot (``PartitionHost.in_flight``, what GetStatus
    reports) or the ``splitinfer_in_flight`` gauge counts it (either below zero counts too)."""
    deadline = time.monotonic() + timeout_s
    while True:
        slots = [abs(n.host.in_flight) + abs(int(_gauge(n.servicer.metrics.in_flight))) for n in nodes]
        used = [n.servicer.budget.used_bytes for n in nodes]
        if (not any(slots) and not any(used)) or time.monotonic() > deadline:
            return slots, used
        time.sleep(0.05)


def _gauge(gauge: Any) -> float:
    """A gauge's value as a scrape reads it (whether the gauge is set directly or reads a function)."""
    return float(next(iter(gauge.collect())).samples[0].value)


def _open_calls(limiters: list[StreamLimiter], timeout_s: float = 5.0) -> list[int]:
    """Data-plane calls the servers' stream limiters still count, once they reach zero (or at ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while any(limiter.active for limiter in limiters) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [limiter.active for limiter in limiters]


def _raw(like: tensor_pb2.Tensor, name: str, payload_bytes: int, shape: list[int] | None = None) -> tensor_pb2.Tensor:
    """A tensor like ``like`` with an honest payload size of ``payload_bytes`` and the given shape."""
    tensor = tensor_pb2.Tensor()
    tensor.CopyFrom(like)
    tensor.name = name
    tensor.payload = b"\0" * payload_bytes
    tensor.payload_size_bytes = payload_bytes
    del tensor.shape[:]
    tensor.shape.extend(shape if shape is not None else [payload_bytes // 4])
    return tensor


# --------------------------------------------------------------------------------------------------------------
# Properties that hold


def test_infer_once_hostile_inputs_get_the_right_code_a_bounded_message_and_leak_nothing(system: SmallSystem) -> None:
    door = Door(system.frontend, "attacker-inputs")
    good = encode_tensor(system.example, system.input_name)
    try:
        cases: dict[str, tuple[frontend_pb2.InferHeader | None, list[tensor_pb2.Tensor], grpc.StatusCode]] = {
            "payload at the 2 MiB bound, wrong shape": (
                door.header("a-1"), [_raw(good, system.input_name, ONCE_MAX_BYTES)], grpc.StatusCode.INVALID_ARGUMENT),
            # Over the bound: INVALID_ARGUMENT naming the budget, as docs/reliability.md has max_request_bytes.
            "payload one element over 2 MiB": (
                door.header("a-2"), [_raw(good, system.input_name, ONCE_MAX_BYTES + 4)],
                grpc.StatusCode.INVALID_ARGUMENT),
            "payload far over 2 MiB": (
                door.header("a-3"), [_raw(good, system.input_name, 3 * ONCE_MAX_BYTES)],
                grpc.StatusCode.INVALID_ARGUMENT),
            "payload shorter than declared": (
                door.header("a-4"), [_raw(good, system.input_name, 64)], grpc.StatusCode.INVALID_ARGUMENT),
            "negative dimension": (
                door.header("a-5"), [_raw(good, system.input_name, 16, [-4])], grpc.StatusCode.INVALID_ARGUMENT),
            "shape larger than the model's": (
                door.header("a-6"), [_raw(good, system.input_name, 4 * 3 * 64 * 64, [1, 3, 64, 64])],
                grpc.StatusCode.INVALID_ARGUMENT),
            "right size, wrong shape": (
                door.header("a-7"), [_raw(good, system.input_name, len(good.payload), [len(good.payload) // 4])],
                grpc.StatusCode.INVALID_ARGUMENT),
            "duplicate tensor names": (door.header("a-8"), [good, good], grpc.StatusCode.INVALID_ARGUMENT),
            "a tensor the plan does not read": (
                door.header("a-9"), [good, _raw(good, "not_read", 16)], grpc.StatusCode.INVALID_ARGUMENT),
            "no tensors": (door.header("a-10"), [], grpc.StatusCode.INVALID_ARGUMENT),
            "no header": (None, [good], grpc.StatusCode.INVALID_ARGUMENT),
            "made-up plan id": (door.header("a-11", plan_id="made-up"), [good], grpc.StatusCode.FAILED_PRECONDITION),
            "another device's plan": (
                door.header("a-12", device=_device("someone-else")), [good], grpc.StatusCode.FAILED_PRECONDITION),
            "request id over 128 bytes": (door.header("x" * 4000), [good], grpc.StatusCode.INVALID_ARGUMENT),
            "no request id": (door.header(""), [good], grpc.StatusCode.INVALID_ARGUMENT),
            "1 ms for the server part": (door.header("a-13", timeout_ms=1), [good], grpc.StatusCode.DEADLINE_EXCEEDED),
        }  # fmt: skip
        for what, (header, tensors, expected) in cases.items():
            code, details, _ = door.once(header, tensors)
            assert code == expected, f"{what}: {code} {details!r}"
            assert len(details) <= MAX_DETAILS, f"{what}: a {len(details)}-character message"
            if "over 2 MiB" in what:
                assert f"budget of {ONCE_MAX_BYTES}" in details, details
        # Absurd but legal timeouts are clamped, not refused; the front-end survived all of the above.
        for request_id, timeout_ms in (("t-huge", 2**64 - 1), ("t-none", 0)):
            code, details, _ = door.once(door.header(request_id, timeout_ms=timeout_ms), [good])
            assert code == grpc.StatusCode.OK, f"timeout_ms={timeout_ms}: {code} {details!r}"
        # Bytes that are no InferOnceRequest at all: the guard refuses them.
        raw = door.channel.unary_unary(
            "/splitinfer.v1.FrontEndService/InferOnce", request_serializer=None, response_deserializer=None
        )
        for garbage in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 16):
            with pytest.raises(grpc.RpcError) as malformed:
                raw(garbage, timeout=10)
            assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, malformed.value.details()
        assert door.once(door.header("after-garbage"), [good])[0] == grpc.StatusCode.OK
        assert _settled(system.nodes) == ([0] * len(system.nodes), [0] * len(system.nodes))
        limiters = [system.frontend.limiter, *(n.limiter for n in system.nodes)]
        assert _open_calls(limiters) == [0] * len(limiters)  # no refusal kept a stream-cap slot
    finally:
        door.close()


def test_infer_once_then_infer_with_the_same_id_is_one_stored_request(system: SmallSystem) -> None:
    assert system.frontend.store is not None
    door = Door(system.frontend, "attacker-doors")
    good = encode_tensor(system.example, system.input_name)
    other = encode_tensor(system.example + 1, system.input_name)
    try:
        before = system.frontend.store.count()
        assert door.once(door.header("both-doors"), [good])[0] == grpc.StatusCode.OK
        header = door.header("both-doors")
        messages = [frontend_pb2.InferRequest(header=header), frontend_pb2.InferRequest(tensor=good)]
        streamed = [r for r in door.stub.Infer(iter(messages), timeout=20) if r.WhichOneof("kind") == "tensor"]
        assert streamed
        assert system.frontend.store.count() == before + 1  # answered from the store, not stored twice
        with pytest.raises(grpc.RpcError) as refused:
            other_messages = [frontend_pb2.InferRequest(header=header), frontend_pb2.InferRequest(tensor=other)]
            list(door.stub.Infer(iter(other_messages), timeout=20))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert door.once(door.header("both-doors"), [other])[0] == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        door.close()


def test_calls_cancelled_mid_flight_give_back_every_slot_and_byte(system: SmallSystem) -> None:
    """A client that gives up (its deadline) while the replicas hang: the nodes' admission slots and memory
    budget come back to zero, and the same id runs afterwards (nothing half-stored under it)."""
    door = Door(system.frontend, "attacker-cancel")
    good = encode_tensor(system.example, system.input_name)
    try:
        assert door.once(door.header("warm"), [good])[0] == grpc.StatusCode.OK
        _hang(system.nodes, 1.5)
        with ThreadPoolExecutor(8) as pool:
            tries = [pool.submit(door.once, door.header(f"gives-up-{i}"), [good], 0.3) for i in range(8)]
            codes = {t.result()[0] for t in tries}
        assert codes <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
        time.sleep(1.5)  # the nodes wake up and see the cancelled calls
        assert _settled(system.nodes) == ([0] * len(system.nodes), [0] * len(system.nodes))
        limiters = [system.frontend.limiter, *(n.limiter for n in system.nodes)]
        assert _open_calls(limiters) == [0] * len(limiters)
        for i in range(8):
            code, details, _ = door.once(door.header(f"gives-up-{i}"), [good])
            assert code == grpc.StatusCode.OK, details
    finally:
        door.close()


@pytest.fixture(scope="module")
def strict_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, dict[str, Any]]]:
    """A node with ONE admission slot hosting the whole Grow model as one partition; its division."""
    node = start_node(
        NodeConfig(torch_threads=1, benchmark_s=0, max_in_flight=1, max_streams=8, max_streams_per_peer=8)
    )
    try:
        division = _grow_division(tmp_path_factory.mktemp("strict"), whole=True)
        assert len(division["division"].partitions) == 1
        key, path, sha = division["saved"]["p0"]
        with NodeClient(node.address) as client:
            client.load_partition(str(path), key, sha)
        yield node, division
    finally:
        node.stop(0.5)


def _whole_route(node: RunningNode, division: dict[str, Any]) -> route_pb2.Route:
    return build_route("grow", "fp32", division["division"].partitions, {"p0": [node.address]})


def _good_request_admitted(node: RunningNode, division: dict[str, Any]) -> None:
    header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=_whole_route(node, division))
    with NodeClient(node.address) as client:
        outputs, _ = client.process(header, [encode_tensor(division["x"], "x")], timeout_s=10)
    assert "mean" in outputs


def test_every_refusal_between_enter_and_leave_gives_the_slot_back(
    strict_node: tuple[RunningNode, dict[str, Any]],
) -> None:
    """A node with ONE admission slot: after each kind of request that fails once the slot is taken (unknown
    partition, a tensor the step does not read, truncated payload, wrong shape, a deadline passed), the
    next good request is still admitted, so no path between ``enter`` and ``leave`` keeps the slot."""
    node, division = strict_node
    route = _whole_route(node, division)
    x = encode_tensor(division["x"], "x")

    def header(**fields: object) -> model_server_pb2.RequestHeader:
        values: dict[str, object] = {"route": route, **fields}
        return model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, **values)  # type: ignore[arg-type]

    unknown = build_route("nothing", "fp32", division["division"].partitions[:1], {"p0": [node.address]})
    truncated = tensor_pb2.Tensor()
    truncated.CopyFrom(x)
    truncated.payload = truncated.payload[:10]
    bad = {  # what fails, the header, the tensors, the client's timeout (it sets the header's timeout_ms)
        "unknown partition": (header(route=unknown), [x], 10.0),
        "a tensor the step does not read": (header(), [x, _raw(x, "not_read", 16)], 10.0),
        "truncated payload": (header(), [truncated], 10.0),
        "wrong shape": (header(), [_raw(x, "x", len(x.payload), [len(x.payload) // 4])], 10.0),
        "entry step out of the route": (header(entry_step=7), [x], 10.0),
        "a 1 ms deadline": (header(), [x], 0.001),
    }
    with grpc.insecure_channel(node.address) as channel:
        once = channel.unary_unary(frames.PROCESS_ONCE_METHOD, request_serializer=None, response_deserializer=None)
        for garbage in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 16):
            with pytest.raises(grpc.RpcError) as malformed:
                once(garbage, timeout=10)
            assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, malformed.value.details()
    with NodeClient(node.address) as client:
        for what, (request, tensors, timeout_s) in bad.items():
            for _ in range(3):
                try:
                    client.process(request, tensors, timeout_s=timeout_s)
                except ResourceExhausted as exc:
                    pytest.fail(f"after {what}: the slot leaked: {exc}")
                except SplitInferError:
                    pass
                else:
                    pytest.fail(f"{what} was accepted")
            outputs, _ = client.process(header(), [x], timeout_s=10)
            assert "mean" in outputs, f"after {what}"
    assert (node.host.in_flight, node.servicer.budget.used_bytes) == (0, 0)
    assert _open_calls([node.limiter]) == [0]


def test_process_streams_abandoned_mid_tensor_give_the_slot_back(
    strict_node: tuple[RunningNode, dict[str, Any]],
) -> None:
    """Process streams (chunked, 1 KiB chunks) that send their header and part of a tensor, then are
    cancelled by their client, or half-close with the tensor incomplete: the node's one slot and its budget
    come back each time (INVALID_ARGUMENT for the incomplete one), and a good request is admitted after."""
    node, division = strict_node
    header = model_server_pb2.RequestHeader(request_id="abandoned", route=_whole_route(node, division))
    wire = WireTensor.from_message(encode_tensor(division["x"], "x"))
    chunks = list(frames.stream_frames([wire], request=True, chunk_bytes=1024))
    assert len(chunks) > 4
    with grpc.insecure_channel(node.address) as channel:
        process = channel.stream_stream(frames.PROCESS_METHOD, request_serializer=None, response_deserializer=None)
        for _ in range(3):
            release = threading.Event()

            def stalled(release: threading.Event = release) -> Iterator[bytes]:
                yield frames.header_frame(header)
                yield from chunks[:3]
                release.wait(10)

            call = process(stalled(), timeout=10)
            deadline = time.monotonic() + 5
            while node.host.in_flight == 0:  # admitted: it holds the slot
                assert time.monotonic() < deadline, "the stream was never admitted"
                time.sleep(0.01)
            call.cancel()
            release.set()
            assert _settled([node]) == ([0], [0]), "a cancelled stream kept its slot or budget"
            assert _open_calls([node.limiter]) == [0], "a cancelled stream kept its stream-cap slot"
            _good_request_admitted(node, division)

            with pytest.raises(grpc.RpcError) as incomplete:
                list(process(iter([frames.header_frame(header), *chunks[:3]]), timeout=10))
            assert incomplete.value.code() == grpc.StatusCode.INVALID_ARGUMENT, incomplete.value.details()
            assert _settled([node]) == ([0], [0]), "an incomplete stream kept its slot or budget"
            assert _open_calls([node.limiter]) == [0]
            _good_request_admitted(node, division)


# --------------------------------------------------------------------------------------------------------------
# Found by this attack, fixed since: each was a strict xfail first


def test_concurrent_tries_of_one_id_never_starve_the_front_end(system: SmallSystem, tmp_path: Path) -> None:
    frontend = start_frontend(
        FrontEndConfig(pool_dir=str(system.pool.root), results_db=str(tmp_path / "results.db"), grpc_workers=2),
        registry=system.registry,
    )
    door = Door(frontend, "attacker-flood")
    good = encode_tensor(system.example, system.input_name)
    try:
        assert door.once(door.header("warm"), [good])[0] == grpc.StatusCode.OK
        _hang(system.nodes, 0.5)  # the first try is still running when the others arrive
        with ThreadPoolExecutor(6) as pool:
            tries = [pool.submit(door.once, door.header("flooded-id", timeout_ms=3000), [good]) for _ in range(6)]
            answers = [t.result() for t in tries]
        assert [a[0] for a in answers] == [grpc.StatusCode.OK] * 6, answers
    finally:
        door.close()
        frontend.stop(0.5)


def test_a_retry_outlives_the_first_try_that_gave_up(system: SmallSystem) -> None:
    door = Door(system.frontend, "attacker-retry")
    good = encode_tensor(system.example, system.input_name)
    try:
        assert door.once(door.header("warm"), [good])[0] == grpc.StatusCode.OK
        _hang(system.nodes, 1.5)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(door.once, door.header("given-up", timeout_ms=10_000), [good], 0.5)
            time.sleep(0.15)
            retry = pool.submit(door.once, door.header("given-up", timeout_ms=10_000), [good], 4)
            assert first.result()[0] == grpc.StatusCode.DEADLINE_EXCEEDED
            code, details, _ = retry.result()
        assert code == grpc.StatusCode.OK, (code, details, _)
    finally:
        door.close()


class Grow(nn.Module):
    """p0 turns a 12 KiB input into a 6.75 MiB activation; p1 reduces it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(nn.functional.interpolate(x, scale_factor=24, mode="nearest"))
        return torch.tanh(y).mean(dim=(2, 3))


def _grow_division(root: Path, *, whole: bool = False) -> dict[str, Any]:
    """Grow cut after its relu (p0, p1), or ``whole`` (one partition p0)."""
    model, x = Grow().eval(), torch.randn(1, 3, 32, 32)
    graph = ModelGraph.build(export_program(model, (x,)), (x,))
    names = [n.name for n in graph.nodes]
    division = partition_at(graph, "grow", [] if whole else [names.index("relu") + 1])
    if not whole:
        assert [s.name for s in division.partitions[1].inputs] == ["relu"]
    return {"model": model, "x": x, "division": division, "saved": _save(division, root / "grow")}


def test_a_hop_larger_than_the_nodes_message_limit_is_streamed(tmp_path: Path) -> None:
    grow = _grow_division(tmp_path)
    nodes = [start_node(NodeConfig(torch_threads=1, benchmark_s=0, max_message_bytes=4 << 20)) for _ in range(2)]
    try:
        for node, part in zip(nodes, ("p0", "p1"), strict=True):
            key, path, sha = grow["saved"][part]
            with NodeClient(node.address) as client:
                client.load_partition(str(path), key, sha)
        division = grow["division"]
        route = build_route("grow", "fp32", division.partitions, {"p0": [nodes[0].address], "p1": [nodes[1].address]})
        header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route, timeout_ms=20_000)
        try:
            with NodeClient(nodes[0].address, max_message_bytes=4 << 20) as client:
                outputs, _ = client.process(header, [encode_tensor(grow["x"], "x")], timeout_s=20)
        finally:
            assert _settled(nodes) == ([0, 0], [0, 0])  # even the failing hop gives everything back
        with torch.no_grad():
            expected = grow["model"](grow["x"])
        assert torch.allclose(decode_tensor(outputs["mean"]), expected, atol=1e-5)
    finally:
        for node in nodes:
            node.stop(0.5)


def test_a_hung_replica_behind_the_unary_hop_is_left_and_gives_everything_back(tmp_path: Path) -> None:
    """p0 hops 6.75 MiB (one ProcessOnce, under HOP_ONCE_MAX_BYTES) to p1 on two replicas, one of them hung:
    every request is answered within its deadline, each once, and once the hung replica wakes every node's
    admission slots and budget are back to zero (the late calls it finds are cancelled)."""
    grow = _grow_division(tmp_path)
    nodes = [start_node(NodeConfig(torch_threads=1, benchmark_s=0)) for _ in range(3)]
    try:
        for node, part in zip(nodes, ("p0", "p1", "p1"), strict=True):
            key, path, sha = grow["saved"][part]
            with NodeClient(node.address) as client:
                client.load_partition(str(path), key, sha)
        division = grow["division"]
        route = build_route("grow", "fp32", division.partitions, {"p0": [nodes[0].address], "p1": [nodes[1].address]})
        p1_step = next(step for step in route.steps if step.partition.partition == "p1")
        p1_step.fallback_addresses.append(nodes[2].address)  # the hung replica first, the awake one next
        left: list[str] = []
        balancer = nodes[0].servicer.forwarder.balancer
        failed = balancer.failed

        def spied(address: str) -> None:
            left.append(address)
            failed(address)

        balancer.failed = spied  # type: ignore[method-assign]
        x = encode_tensor(grow["x"], "x")
        with torch.no_grad():
            expected = grow["model"](grow["x"])
        with NodeClient(nodes[0].address) as client:
            client.process(model_server_pb2.RequestHeader(request_id="warm", route=route), [x], timeout_s=20)
            _hang(nodes[1:2], 3.5)  # longer than an attempt's budget: half of the 5 s left
            with ThreadPoolExecutor(4) as pool:
                tries = [
                    pool.submit(
                        client.process,
                        model_server_pb2.RequestHeader(request_id=f"hung-{i}", route=route),
                        [x],
                        5.0,
                    )
                    for i in range(4)
                ]
                answers = [t.result() for t in tries]
        for outputs, timings in answers:
            assert torch.allclose(decode_tensor(outputs["mean"]), expected, atol=1e-5)
            p1 = [t for t in timings if t.partition.partition == "p1"]
            assert len(p1) == 1 and p1[0].node == nodes[2].address, timings  # once, on the replica awake
        assert _settled(nodes, timeout_s=8.0) == ([0, 0, 0], [0, 0, 0])
        assert _open_calls([n.limiter for n in nodes]) == [0, 0, 0]
        assert nodes[1].address in left and nodes[2].address not in left  # the hung replica was tried and left
    finally:
        for node in nodes:
            node.stop(0.5)


def test_a_unary_hop_over_the_next_nodes_byte_budget_is_refused_and_leaks_nothing(tmp_path: Path) -> None:
    """The 6.75 MiB unary hop into a node whose memory budget (max_in_flight_bytes, 8 MiB) cannot hold it with
    its decoded copy: RESOURCE_EXHAUSTED reaches the caller through the forwarder, with a bounded message, and
    neither node keeps a slot or a byte; a small request to the same node still runs."""
    grow = _grow_division(tmp_path)
    whole = _grow_division(tmp_path / "whole", whole=True)
    first = start_node(NodeConfig(torch_threads=1, benchmark_s=0))
    tight = start_node(NodeConfig(torch_threads=1, benchmark_s=0, max_in_flight_bytes=8 << 20))
    nodes = [first, tight]
    try:
        for node, saved in ((first, grow["saved"]["p0"]), (tight, grow["saved"]["p1"]), (tight, whole["saved"]["p0"])):
            key, path, sha = saved
            with NodeClient(node.address) as client:
                client.load_partition(str(path), key, sha)
        route = build_route("grow", "fp32", grow["division"].partitions, {"p0": [first.address], "p1": [tight.address]})
        with NodeClient(first.address) as client:
            for i in range(3):
                header = model_server_pb2.RequestHeader(request_id=f"over-budget-{i}", route=route)
                with pytest.raises(ResourceExhausted) as refused:
                    client.process(header, [encode_tensor(grow["x"], "x")], timeout_s=10)
                assert len(str(refused.value)) <= MAX_DETAILS and "budget" in str(refused.value), str(refused.value)
        assert _settled(nodes) == ([0, 0], [0, 0])
        _good_request_admitted(tight, whole)
    finally:
        for node in nodes:
            node.stop(0.5)


class Big(nn.Module):
    """A 12 KiB input, a 6.75 MiB output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(nn.functional.interpolate(x, scale_factor=24, mode="nearest"))


def test_infer_once_never_loses_an_answer_too_large_for_one_message(tmp_path: Path) -> None:
    """A 6.75 MiB answer is over what one InferOnce message carries (ONCE_MAX_BYTES; a default gRPC client
    receives 4 MiB): the request runs once and is stored, InferOnce says so (RESOURCE_EXHAUSTED naming Infer),
    and Infer under the same request id streams the stored answer."""
    model, x = Big().eval(), torch.randn(1, 3, 32, 32)
    graph = ModelGraph.build(export_program(model, (x,)), (x,))
    pool = ModelPool(tmp_path / "pool")
    sha = pool.add_division(
        partition_at(graph, "big", []), variant="fp32", division_name="default", task="big", accuracy=0.9
    )
    registry = EmbeddedRegistry()
    node = start_node(NodeConfig(torch_threads=1, benchmark_s=0.05, status_interval_s=0.2), registry=registry)
    frontend = None
    try:
        for part in pool.manifest(sha)["partitions"]:
            target = tmp_path / "export" / part["name"]
            part_sha = pool.export_partition(sha, part["name"], target)
            with NodeClient(node.address) as client:
                client.load_partition(str(target), PartitionKey("big", "fp32", part["name"]), part_sha)
        node.publish()
        deadline = time.monotonic() + 10
        while not registry.replicas("big@fp32/p0"):
            assert time.monotonic() < deadline, "the node did not publish its partition"
            time.sleep(0.05)
        frontend = start_frontend(
            FrontEndConfig(pool_dir=str(pool.root), results_db=str(tmp_path / "results.db")), registry=registry
        )
        assert frontend.store is not None
        device = _device("big-answers")
        with grpc.insecure_channel(frontend.address) as channel:  # gRPC's default receive limit: 4 MiB
            stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
            plan = stub.Plan(frontend_pb2.PlanRequest(model="big", device=device), timeout=30).plan
            assert list(plan.entry_tensors) == ["x"]
            header = frontend_pb2.InferHeader(request_id="big-1", device=device, plan_id=plan.plan_id)
            before = frontend.store.count()
            with pytest.raises(grpc.RpcError) as refused:
                stub.InferOnce(
                    frontend_pb2.InferOnceRequest(header=header, tensors=[encode_tensor(x, "x")]), timeout=30
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ONCE_ANSWER_TOO_LARGE in (refused.value.details() or "")
            assert len(refused.value.details() or "") <= 1024
            assert frontend.store.count() == before + 1  # ran once, stored
            messages = [
                frontend_pb2.InferRequest(header=header),
                frontend_pb2.InferRequest(tensor=encode_tensor(x, "x")),
            ]
            assembler, outputs = TensorAssembler(), {}
            for response in stub.Infer(iter(messages), timeout=30):
                kind = response.WhichOneof("kind")
                if kind in ("tensor", "chunk") and (done := assembler.add(getattr(response, kind))) is not None:
                    outputs[done.name] = decode_tensor(done)
            assert frontend.store.count() == before + 1  # answered from the store, not run again
            with torch.no_grad():
                expected = model(x)
            assert len(outputs) == 1 and torch.allclose(next(iter(outputs.values())), expected, atol=1e-5)
    finally:
        if frontend is not None:
            frontend.stop(0.5)
        node.stop(0.5)
