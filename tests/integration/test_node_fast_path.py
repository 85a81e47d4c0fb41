"""The node's direct path for a request of one step alone (``RequestExecutor.alone`` / ``run_alone``, taken
by ProcessOnce when nobody traces) against its general path (the executor's generator, taken by Process
streams and by traced ProcessOnce calls): the same hostile requests get the same status from both doors,
good ones the same outputs, and both keep the in-flight gauge, the step metrics, the admission count and the
memory budget straight. An in-process node on port 0, so that the test can see which path ran."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from torch import nn

from server_node.config import NodeConfig
from server_node.executor import RequestExecutor
from server_node.server import RunningNode, start_node
from splitinfer import tracing
from splitinfer.codecs import WireTensor, decode_wire, encode_wire
from splitinfer.program import export_program
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.transport import frames
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import model_server_pb2, route_pb2

TRACEPARENT = ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
OK = grpc.StatusCode.OK


class Lookup(nn.Module):
    """An embedding (an index out of range is a value the partition cannot run on) plus a second input."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.table(ids) + bias


IDS = torch.tensor([1, 2, 3])
BIAS = torch.ones(3, 4)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[PartitionKey, Path, list[str], list[str]]:
    program = export_program(Lookup().eval(), (IDS, BIAS))
    key = PartitionKey("lookup", "fp32", "p0")
    path = tmp_path_factory.mktemp("lookup") / "p0"
    save_partition_artifact(program, key, path)
    return key, path, list(program.input_names), list(program.output_names)


def _start(artifact: tuple[PartitionKey, Path, list[str], list[str]], **config: object) -> RunningNode:
    node = start_node(NodeConfig(torch_threads=1, benchmark_s=0, **config))  # type: ignore[arg-type]
    key, path, _, _ = artifact
    with NodeClient(node.address) as client:
        client.load_partition(str(path), key)
    return node


@pytest.fixture(scope="module")
def node(artifact: tuple[PartitionKey, Path, list[str], list[str]]) -> Iterator[RunningNode]:
    running = _start(artifact)
    try:
        yield running
    finally:
        running.stop(0)


class Doors:
    """The three ways in: ProcessOnce untraced (the direct path), ProcessOnce traced and Process (general)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self._once = self.channel.unary_unary(frames.PROCESS_ONCE_METHOD, None, frames.parse_once_response)
        self._stream = self.channel.stream_stream(frames.PROCESS_METHOD, None, frames.parse_process_response)

    def once(
        self, header: model_server_pb2.RequestHeader, tensors: list[WireTensor], traced: bool = False
    ) -> tuple[grpc.StatusCode, dict[str, WireTensor], int]:
        metadata = (TRACEPARENT,) if traced else None
        try:
            answer = self._once(frames.once_request(header, tensors), timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code(), {}, 0
        return OK, {t.name: t for t in answer.tensors}, len(answer.done.timings)

    def stream(
        self, header: model_server_pb2.RequestHeader, tensors: list[WireTensor]
    ) -> tuple[grpc.StatusCode, dict[str, WireTensor], int]:
        messages = [frames.header_frame(header), *frames.stream_frames(tensors, request=True)]
        outputs: dict[str, WireTensor] = {}
        timings = 0
        try:
            for response in self._stream(iter(messages), timeout=10):
                if response.kind == "tensor":
                    outputs[response.value.name] = response.value
                elif response.kind == "done":
                    timings = len(response.value.timings)
        except grpc.RpcError as exc:
            return exc.code(), {}, 0
        return OK, outputs, timings

    def all(
        self, header: model_server_pb2.RequestHeader, tensors: list[WireTensor]
    ) -> list[tuple[grpc.StatusCode, dict[str, WireTensor], int]]:
        answers = []
        for door in ("direct", "traced", "stream"):
            fresh = model_server_pb2.RequestHeader()
            fresh.CopyFrom(header)
            fresh.request_id = uuid.uuid4().hex
            if door == "stream":
                answers.append(self.stream(fresh, tensors))
            else:
                answers.append(self.once(fresh, tensors, traced=door == "traced"))
        return answers


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests the direct path ran (``run_alone`` calls), this test."""
    calls: list[int] = []
    original = RequestExecutor.run_alone

    async def run_alone(self: RequestExecutor, *args: object) -> object:
        calls.append(1)
        return await original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(RequestExecutor, "run_alone", run_alone)
    # A node in a process without a tracer provider: tests/unit/test_tracing.py sets one for the whole test
    # process when it is collected, which sends every request through the traced (general) path. Requests
    # that carry a trace context still count as traced.
    monkeypatch.setattr(
        tracing, "traced", lambda metadata=None: any(key in tracing.TRACE_KEYS for key, _ in metadata or ())
    )
    return calls


def _header(
    key: PartitionKey, address: str, outputs: list[route_pb2.TensorRoute] | None = None, timeout_ms: int = 10_000
) -> model_server_pb2.RequestHeader:
    ref = route_pb2.PartitionRef(model=key.model, variant=key.variant, partition=key.partition)
    step = route_pb2.RouteStep(partition=ref, addresses=[address], outputs=outputs or [])
    return model_server_pb2.RequestHeader(
        request_id=uuid.uuid4().hex, route=route_pb2.Route(steps=[step]), timeout_ms=timeout_ms
    )


def _codes(answers: list[tuple[grpc.StatusCode, dict[str, WireTensor], int]]) -> list[grpc.StatusCode]:
    return [code for code, _, _ in answers]


def _histogram_count(node: RunningNode, name: str) -> float:
    total = 0.0
    for metric in node.servicer.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_count":
                total += sample.value
    return total


def _gauge(node: RunningNode, name: str) -> float:
    value = node.servicer.metrics.registry.get_sample_value(name)
    assert value is not None
    return value


def _settled(node: RunningNode) -> None:
    assert node.host.in_flight == 0
    assert node.servicer.budget.used_bytes == 0
    assert _gauge(node, "splitinfer_in_flight") == 0


def test_good_requests_give_the_same_outputs_and_metrics_on_every_path(
    node: RunningNode, artifact: tuple[PartitionKey, Path, list[str], list[str]], counted: list[int]
) -> None:
    key, _, inputs, outputs = artifact
    tensors = [encode_wire(IDS, inputs[0]), encode_wire(BIAS, inputs[1])]
    computed_before = _histogram_count(node, "splitinfer_partition_compute_seconds")
    answers = Doors(node.address).all(_header(key, node.address), tensors)
    assert _codes(answers) == [OK, OK, OK]
    assert counted == [1], "the untraced ProcessOnce took the direct path, the others did not"
    values = [decode_wire(out[outputs[0]].head, out[outputs[0]].payload) for _, out, _ in answers]
    for value in values[1:]:
        assert torch.equal(value, values[0])
    assert [timings for _, _, timings in answers] == [1, 1, 1]
    assert _histogram_count(node, "splitinfer_partition_compute_seconds") == computed_before + 3
    _settled(node)


def test_an_output_route_for_a_tensor_the_partition_does_not_make_is_refused_alike(
    node: RunningNode, artifact: tuple[PartitionKey, Path, list[str], list[str]], counted: list[int]
) -> None:
    key, _, inputs, _ = artifact
    tensors = [encode_wire(IDS, inputs[0]), encode_wire(BIAS, inputs[1])]
    header = _header(key, node.address, [route_pb2.TensorRoute(tensor_name="nope", deliver=True)])
    answers = Doors(node.address).all(header, tensors)
    assert _codes(answers) == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    assert counted == [1]
    _settled(node)


def test_values_the_partition_cannot_run_on_are_invalid_argument_alike(
    node: RunningNode, artifact: tuple[PartitionKey, Path, list[str], list[str]], counted: list[int]
) -> None:
    key, _, inputs, _ = artifact
    tensors = [encode_wire(torch.tensor([1, 50, 3]), inputs[0]), encode_wire(BIAS, inputs[1])]
    answers = Doors(node.address).all(_header(key, node.address), tensors)
    assert _codes(answers) == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    assert counted == [1]
    _settled(node)


def test_checks_before_either_path_answer_alike(
    node: RunningNode, artifact: tuple[PartitionKey, Path, list[str], list[str]], counted: list[int]
) -> None:
    """Wrong shape, wrong dtype, a tensor the partition does not read, a missing input (the direct path
    declines it: a lone step needs all of its inputs), an unknown partition, a route step out of range."""
    key, _, inputs, _ = artifact
    doors = Doors(node.address)
    ids, bias = encode_wire(IDS, inputs[0]), encode_wire(BIAS, inputs[1])
    cases = {
        "wrong shape": ([ids, encode_wire(torch.ones(2, 4), inputs[1])], _header(key, node.address)),
        "wrong dtype": ([ids, encode_wire(BIAS.double(), inputs[1])], _header(key, node.address)),
        "unread tensor": ([ids, bias, encode_wire(BIAS, "extra")], _header(key, node.address)),
        "missing input": ([ids], _header(key, node.address)),
        "unknown partition": ([ids, bias], _header(PartitionKey("lookup", "fp32", "p9"), node.address)),
    }
    for case, (tensors, header) in cases.items():
        codes = _codes(doors.all(header, tensors))
        assert len(set(codes)) == 1 and codes[0] != OK, (case, codes)
    out_of_range = _header(key, node.address)
    out_of_range.entry_step = 3
    assert _codes(doors.all(out_of_range, [ids, bias])) == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    assert counted == [], "every one of these was refused before the direct path"
    _settled(node)


def test_a_deadline_that_passes_during_compute_is_deadline_exceeded_alike(
    artifact: tuple[PartitionKey, Path, list[str], list[str]], counted: list[int]
) -> None:
    key, path, inputs, _ = artifact
    node = start_node(NodeConfig(torch_threads=1, benchmark_s=0), compute_hook=_Sleep(0.3))
    try:
        with NodeClient(node.address) as client:
            client.load_partition(str(path), key)
        tensors = [encode_wire(IDS, inputs[0]), encode_wire(BIAS, inputs[1])]
        answers = Doors(node.address).all(_header(key, node.address, timeout_ms=100), tensors)
        assert _codes(answers) == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
        assert counted == [1]
        _settled(node)
    finally:
        node.stop(0)


class _Sleep:
    """A compute hook (``server_node.compute.ComputeHook``, as the testbed's slowdown is): every run takes
    ``seconds`` more."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def after_run(self, partition: object, elapsed_s: float) -> None:
        time.sleep(self.seconds)

    def reported_flops(self, measured: float) -> float:
        return measured


def test_the_memory_budget_refuses_alike(
    artifact: tuple[PartitionKey, Path, list[str], list[str]], counted: list[int]
) -> None:
    """A budget smaller than one request's reservation: RESOURCE_EXHAUSTED from every door, nothing held."""
    key, _, inputs, _ = artifact
    node = _start(artifact, max_in_flight_bytes=16)
    try:
        tensors = [encode_wire(IDS, inputs[0]), encode_wire(BIAS, inputs[1])]
        answers = Doors(node.address).all(_header(key, node.address), tensors)
        assert _codes(answers) == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
        assert counted == []
        _settled(node)
    finally:
        node.stop(0)


def test_malformed_bytes_are_invalid_argument_on_process_once(node: RunningNode) -> None:
    call = grpc.insecure_channel(node.address).unary_unary(frames.PROCESS_ONCE_METHOD, None, None)
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\xff\xff\xff\xff", timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
