"""A node tried as an attacker or a careless client would: idle streams, inflating payloads, tensors the
step never reads, oversized routes and fan-out, absurd deadlines, per-peer caps, memory budget, values that
make a partition fail. Real node processes (or in-process nodes where the test reads internals) on port 0."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import torch
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc
from torch import nn

from server_node.config import NodeConfig
from server_node.process import NodeProcess, spawn_node
from server_node.server import RunningNode, start_node
from splitinfer.codecs import encode_tensor
from splitinfer.divider import Division
from splitinfer.errors import DeadlineExceeded, InvalidArgument
from splitinfer.program import export_program
from splitinfer.routing import build_route
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import model_server_pb2, model_server_pb2_grpc, route_pb2, tensor_pb2
from tests.integration.test_data_plane import _diamond_division, _save

IDLE_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def diamond(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("diamond")
    model, x, division = _diamond_division()
    return {"model": model, "x": x, "division": division, "saved": _save(division, root)}


def _load_all(address: str, saved: dict) -> None:  # type: ignore[type-arg]
    with NodeClient(address) as client:
        for key, path, sha in saved.values():
            client.load_partition(str(path), key, sha)


@pytest.fixture(scope="module")
def node(diamond: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:  # type: ignore[type-arg]
    config = tmp_path_factory.mktemp("node") / "node.json"
    config.write_text(
        json.dumps(
            {"first_message_timeout_s": IDLE_TIMEOUT_S, "idle_timeout_s": IDLE_TIMEOUT_S, "max_streams": 1500,
             "max_streams_per_peer": 1200, "benchmark_s": 0}
        )
    )  # fmt: skip
    process = spawn_node(["--torch-threads", "1", "--config", str(config)])
    try:
        _load_all(process.address, diamond["saved"])
        yield process
    finally:
        process.stop()


def _route(division: Division, address: str) -> route_pb2.Route:
    return build_route("diamond", "fp32", division.partitions, {p.name: [address] for p in division.partitions})


def _header(route: route_pb2.Route, timeout_ms: int = 10_000, entry: int = 0) -> model_server_pb2.RequestHeader:
    return model_server_pb2.RequestHeader(
        request_id=uuid.uuid4().hex, route=route, timeout_ms=timeout_ms, entry_step=entry
    )


def _completed(address: str) -> int:
    with NodeClient(address) as client:
        return sum(p.completed for p in client.status().partitions)


def _status(address: str) -> model_server_pb2.GetStatusResponse:
    with NodeClient(address) as client:
        return client.status()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _good_requests(address: str, route: route_pb2.Route, x: torch.Tensor, devices: int, each: int) -> list[float]:
    """Latencies (s) of ``devices`` threads sending ``each`` requests; raises if any fails."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def device() -> None:
        with NodeClient(address) as client:
            for _ in range(each):
                start = time.perf_counter()
                try:
                    outputs, _ = client.process(_header(route), [encode_tensor(x, "x")], timeout_s=10)
                    assert "linear" in outputs
                except BaseException as exc:
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=device) for _ in range(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return latencies


def test_thousand_idle_streams_neither_starve_good_requests_nor_health_and_are_closed(
    node: NodeProcess,
    diamond: dict,  # type: ignore[type-arg]
) -> None:
    route = _route(diamond["division"], node.address)
    _good_requests(node.address, route, diamond["x"], 8, 5)  # warm up
    unloaded = _good_requests(node.address, route, diamond["x"], 8, 25)
    idle_count = 1000
    outcomes: list[tuple[grpc.StatusCode, float]] = []
    opened = threading.Event()

    async def idle_streams() -> None:
        channels = [grpc.aio.insecure_channel(node.address) for _ in range(10)]

        async def one(channel: grpc.aio.Channel) -> None:
            async def nothing() -> AsyncIterator[model_server_pb2.ProcessRequest]:
                await asyncio.sleep(3600)
                yield model_server_pb2.ProcessRequest()

            start = time.monotonic()
            call = model_server_pb2_grpc.ModelServerServiceStub(channel).Process(nothing())  # no deadline
            try:
                async for _ in call:
                    pass
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            outcomes.append((code, time.monotonic() - start))

        tasks = [asyncio.create_task(one(channels[i % len(channels)])) for i in range(idle_count)]
        await asyncio.sleep(1.0)
        opened.set()
        await asyncio.gather(*tasks)
        for channel in channels:
            await channel.close()

    runner = threading.Thread(target=lambda: asyncio.run(idle_streams()))
    runner.start()
    assert opened.wait(30)
    status = _status(node.address)
    assert status.open_streams >= idle_count * 0.9, status.open_streams  # the idle streams are really open
    with grpc.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    loaded = _good_requests(node.address, route, diamond["x"], 8, 10)  # every good request is answered
    assert len(loaded) == 80
    runner.join(timeout=IDLE_TIMEOUT_S + 30)
    assert not runner.is_alive()
    assert len(outcomes) == idle_count
    assert {code for code, _ in outcomes} == {grpc.StatusCode.DEADLINE_EXCEEDED}  # closed by the server...
    assert max(elapsed for _, elapsed in outcomes) < IDLE_TIMEOUT_S + 10  # ...at their timeout
    assert min(elapsed for _, elapsed in outcomes) > IDLE_TIMEOUT_S - 0.5
    # The p99 ratio is measured by benchmarks/load.py on a quiet machine; here it is only reported.
    print(f"p99 unloaded {_p99(unloaded) * 1e3:.1f} ms, beside {idle_count} idle streams {_p99(loaded) * 1e3:.1f} ms "
          f"(median {statistics.median(unloaded) * 1e3:.1f} / {statistics.median(loaded) * 1e3:.1f})")  # fmt: skip


def test_streams_beyond_the_per_peer_cap_are_refused_and_health_still_answers(
    diamond: dict,  # type: ignore[type-arg]
) -> None:
    running = start_node(NodeConfig(max_streams=16, max_streams_per_peer=4, max_in_flight=4, benchmark_s=0))
    try:

        async def attempt() -> list[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(running.address) as channel:
                stub = model_server_pb2_grpc.ModelServerServiceStub(channel)

                async def idle() -> grpc.StatusCode:
                    async def nothing() -> AsyncIterator[model_server_pb2.ProcessRequest]:
                        await asyncio.sleep(3600)
                        yield model_server_pb2.ProcessRequest()

                    try:
                        async for _ in stub.Process(nothing(), timeout=1.5):
                            pass
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()
                    return grpc.StatusCode.OK

                tasks = [asyncio.create_task(idle()) for _ in range(6)]
                await asyncio.sleep(0.5)
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                status = await stub.GetStatus(model_server_pb2.GetStatusRequest(), timeout=1)
                assert status.open_streams == 4 and status.refused == 2
                return list(await asyncio.gather(*tasks))

        codes = asyncio.run(attempt())
        assert sorted(c.name for c in codes) == ["DEADLINE_EXCEEDED"] * 4 + ["RESOURCE_EXHAUSTED"] * 2
        assert running.servicer.metrics.errors.labels("RESOURCE_EXHAUSTED")._value.get() == 2  # counted
    finally:
        running.stop(0.5)


def _bomb(name: str, shape: list[int], raw_bytes: int) -> tensor_pb2.Tensor:
    payload = zstandard.ZstdCompressor(level=19).compress(b"\x00" * raw_bytes)
    return tensor_pb2.Tensor(
        name=name, dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=shape, payload=payload, payload_size_bytes=len(payload),
        encoding=tensor_pb2.Encoding(lossless=tensor_pb2.LOSSLESS_CODEC_ZSTD),
    )  # fmt: skip


def test_inflating_payloads_and_unused_tensors_are_refused_before_allocation(
    node: NodeProcess,
    diamond: dict,  # type: ignore[type-arg]
) -> None:
    route = _route(diamond["division"], node.address)
    rss_before = _status(node.address).process_memory_bytes
    # 1. A 1 GiB zstd bomb (a few KiB on the wire) for a tensor whose shape is not the partition's.
    bomb = _bomb("x", [16384, 16384], 1 << 30)
    assert bomb.payload_size_bytes < 64 << 10
    with NodeClient(node.address) as client:
        for _ in range(3):
            with pytest.raises(InvalidArgument, match="must be"):
                client.process(_header(route), [bomb], timeout_s=10)
    # 2. Two 128 MiB tensors the step never reads, streamed in chunks, next to the real input.
    junk = [encode_tensor(torch.zeros(32 << 20), f"junk{i}") for i in range(2)]
    unused = pytest.raises(InvalidArgument, match="does not read a tensor named 'junk0'")
    with NodeClient(node.address, once_max_bytes=0) as client, unused:
        client.process(_header(route), [encode_tensor(diamond["x"], "x"), *junk], timeout_s=30)
    # 3. The right name and shape, but a payload claiming more than the input can need (the byte budget).
    liar = encode_tensor(diamond["x"], "x")
    liar.payload_size_bytes = 100 << 20
    with NodeClient(node.address, once_max_bytes=0) as client, pytest.raises(InvalidArgument, match="budget"):
        client.process(_header(route), [liar], timeout_s=10)
    growth = _status(node.address).process_memory_bytes - rss_before
    assert growth < 64 << 20, f"node memory grew by {growth / 2**20:.0f} MiB"
    outputs, _ = NodeClient(node.address).process(_header(route), [encode_tensor(diamond["x"], "x")], timeout_s=10)
    assert "linear" in outputs  # and the node still serves


def test_oversized_routes_and_fan_out_are_refused_before_any_partition_runs(
    node: NodeProcess,
    diamond: dict,  # type: ignore[type-arg]
) -> None:
    route = _route(diamond["division"], node.address)
    ref = route.steps[0].partition
    x = encode_tensor(diamond["x"], "x")
    before = _completed(node.address)
    long_route = route_pb2.Route(steps=[route_pb2.RouteStep(partition=ref, addresses=[node.address])] * 10_000)
    wide = route_pb2.Route()
    wide.CopyFrom(route)
    wide.steps[0].outputs[0].consumer_steps.extend([1] * 999)
    wide_steps = route_pb2.Route()
    wide_steps.CopyFrom(route)
    for _ in range(30):
        wide_steps.steps.append(route_pb2.RouteStep(partition=route.steps[1].partition, addresses=[node.address]))
    wide_steps.steps[0].outputs.extend(
        route_pb2.TensorRoute(tensor_name="relu", consumer_steps=[i]) for i in range(4, 34)
    )
    cycle = route_pb2.Route()
    cycle.CopyFrom(route)
    cycle.steps[2].outputs[0].consumer_steps.append(0)
    with NodeClient(node.address) as client:
        for bad, why in ((long_route, "10000 steps"), (wide, "fan-out"), (wide_steps, "feeds"), (cycle, "later")):
            with pytest.raises(InvalidArgument, match=why):
                client.process(_header(bad), [x], timeout_s=10)
    assert _completed(node.address) == before  # nothing ran


@pytest.fixture(scope="module")
def slow_node(diamond: dict) -> Iterator[NodeProcess]:  # type: ignore[type-arg]
    """Computes 50x slower (the testbed's compute hook): a request takes well over a few milliseconds."""
    process = spawn_node(["--torch-threads", "1"], slowdown=50.0)
    try:
        _load_all(process.address, diamond["saved"])
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("timeout_ms", [0, 1, 2, 2**64 - 1, 10**13])
def test_huge_and_tiny_deadlines_are_answered_never_unknown(
    slow_node: NodeProcess,
    diamond: dict,  # type: ignore[type-arg]
    timeout_ms: int,
) -> None:
    node = slow_node
    route = _route(diamond["division"], node.address)
    x = encode_tensor(diamond["x"], "x")
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED}
    with grpc.insecure_channel(node.address) as channel:
        stub = model_server_pb2_grpc.ModelServerServiceStub(channel)
        header = _header(route, timeout_ms)
        try:
            stub.ProcessOnce(model_server_pb2.ProcessOnceRequest(header=header, tensors=[x]), timeout=30)
            once = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            once = exc.code()  # type: ignore[attr-defined]
        header = _header(route, timeout_ms)
        try:
            requests = iter([model_server_pb2.ProcessRequest(header=header), model_server_pb2.ProcessRequest(tensor=x)])
            list(stub.Process(requests, timeout=30))
            streamed = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            streamed = exc.code()  # type: ignore[attr-defined]
    assert once in allowed and streamed in allowed, (once, streamed)
    if timeout_ms in (1, 2):
        assert once == streamed == grpc.StatusCode.DEADLINE_EXCEEDED  # never OK after the deadline passed
    else:
        assert once == streamed == grpc.StatusCode.OK


def test_memory_budget_refuses_requests_beyond_it(diamond: dict) -> None:  # type: ignore[type-arg]
    running = start_node(NodeConfig(max_in_flight_bytes=4096, benchmark_s=0))
    try:
        _load_all(running.address, diamond["saved"])
        route = _route(diamond["division"], running.address)
        from splitinfer.errors import ResourceExhausted

        with NodeClient(running.address) as client, pytest.raises(ResourceExhausted, match="memory budget"):
            client.process(_header(route), [encode_tensor(diamond["x"], "x")], timeout_s=5)
        assert running.servicer.budget.used_bytes == 0
    finally:
        running.stop(0.5)


class Lookup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


def test_input_values_that_break_a_partition_are_invalid_argument_counted_and_not_retried(tmp_path: Path) -> None:
    ids = torch.tensor([[1, 2, 3]])
    program = export_program(Lookup().eval(), (ids,))
    key = PartitionKey("lookup", "fp32", "p0")
    sha = save_partition_artifact(program, key, tmp_path / "p0")
    nodes: list[RunningNode] = [start_node(NodeConfig(benchmark_s=0)) for _ in range(2)]
    try:
        for running in nodes:
            with NodeClient(running.address) as client:
                client.load_partition(str(tmp_path / "p0"), key, sha)
        name = program.input_names[0]
        ref = route_pb2.PartitionRef(model="lookup", variant="fp32", partition="p0")
        step = route_pb2.RouteStep(partition=ref, addresses=[n.address for n in nodes], input_names=[name])
        route = route_pb2.Route(steps=[step])
        from splitinfer.transport.clients import RouteClient

        client = RouteClient()
        outputs, _ = client.run(route, {name: encode_tensor(ids, name)})
        assert outputs
        with pytest.raises(InvalidArgument, match="cannot run on these input values") as info:
            client.run(route, {name: encode_tensor(torch.tensor([[1, 2, 99]]), name)})
        assert "index out of range" not in str(info.value)  # the exception text stays on the server
        client.close()
        errors = [n.servicer.metrics.errors.labels("INVALID_ARGUMENT")._value.get() for n in nodes]
        assert sorted(errors) == [0.0, 1.0]  # counted once, on one replica: never retried on the other
    finally:
        for running in nodes:
            running.stop(0.5)


def test_tiny_deadline_over_the_sync_client_is_deadline_exceeded(node: NodeProcess, diamond: dict) -> None:  # type: ignore[type-arg]
    route = _route(diamond["division"], node.address)
    with NodeClient(node.address) as client, pytest.raises(DeadlineExceeded):
        client.process(_header(route), [encode_tensor(diamond["x"], "x")], timeout_s=0.001)
