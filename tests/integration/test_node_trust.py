"""The trust boundary of the data plane and hung replicas: a device-made route naming an address outside
the registry never makes a node connect there (a listening socket counts connections), and a SIGSTOPped
replica is left within its attempt budget so every request finishes inside its deadline, delivered once."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from server_node.config import NodeConfig
from server_node.process import NodeProcess, spawn_node
from server_node.server import RunningNode, start_node
from splitinfer.codecs import encode_tensor
from splitinfer.errors import PermissionDenied
from splitinfer.registry import FRONTEND, EmbeddedRegistry, ServerRecord
from splitinfer.routing import build_route
from splitinfer.transport.clients import NodeClient, RouteClient
from splitinfer.transport.sink import ResultSink
from splitinfer.v1 import model_server_pb2, result_sink_pb2_grpc
from tests.integration.test_data_plane import _diamond_division, _save


class CountingListener:
    """A TCP socket that accepts and counts connections (and sends nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("trust")
    _, x, division = _diamond_division()
    saved = _save(division, root)
    registry = EmbeddedRegistry()
    nodes: list[RunningNode] = [
        start_node(NodeConfig(benchmark_s=0, status_interval_s=0.2), registry=registry) for _ in range(2)
    ]
    try:
        for running in nodes:
            with NodeClient(running.address) as client:
                for key, path, sha in saved.values():
                    client.load_partition(str(path), key, sha)
        yield {"registry": registry, "nodes": nodes, "division": division, "x": x}
    finally:
        for running in nodes:
            running.stop(0.5)


def test_route_naming_an_unregistered_address_never_causes_a_connection(registered: dict) -> None:  # type: ignore[type-arg]
    a, b = (n.address for n in registered["nodes"])
    division = registered["division"]
    listener = CountingListener()
    x = {"x": encode_tensor(registered["x"], "x")}
    try:
        client = RouteClient()
        # A good route between registered nodes works.
        good = build_route("diamond", "fp32", division.partitions, {"p0": [a], "p1": [b], "p2": [a], "p3": [b]})
        assert "linear" in client.run(good, x)[0]
        # A later step, a fallback, or the sink aimed at an address outside the registry: refused, no connection.
        evil_step = build_route(
            "diamond", "fp32", division.partitions, {"p0": [a], "p1": [listener.address], "p2": [a], "p3": [b]}
        )
        evil_fallback = build_route("diamond", "fp32", division.partitions, {p.name: [a] for p in division.partitions})
        evil_fallback.steps[1].fallback_addresses.append(listener.address)
        evil_sink = build_route(
            "diamond", "fp32", division.partitions, {p.name: [a] for p in division.partitions}, sink=listener.address
        )
        evil_sink.sink = f"10.255.0.1:{listener.address.rsplit(':', 1)[1]}"  # not the caller's host
        for route in (evil_step, evil_sink):
            with pytest.raises(PermissionDenied, match=r"not a registered|neither"):
                client.run(route, x)
        # An unregistered fallback next to a registered replica is dropped, never tried: the request succeeds.
        with NodeClient(a) as direct:
            for _ in range(3):
                header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=evil_fallback)
                assert "linear" in direct.process(header, [x["x"]], timeout_s=10)[0]
        time.sleep(0.3)
        assert listener.connections == 0
        # Control: once the address is a registered front-end, the same sink is contacted (the counter works).
        registered["registry"].register(ServerRecord(address=listener.address, role=FRONTEND), ttl_s=30)
        assert listener.address in registered["registry"].frontends()
        assert listener.address not in registered["registry"].servers()  # front-ends are never replicas
        sink_route = build_route(
            "diamond", "fp32", division.partitions, {p.name: [a] for p in division.partitions}, sink=listener.address
        )
        with pytest.raises(Exception):  # noqa: B017 - the listener speaks no gRPC; only the connection matters
            client.run(sink_route, x, timeout_s=2)
        assert listener.connections >= 1
        client.close()
    finally:
        listener.close()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("replicas")
    _, x, division = _diamond_division()
    saved = _save(division, root)
    procs: dict[str, NodeProcess] = {name: spawn_node(["--torch-threads", "1"]) for name in ("a", "b1", "b2")}
    try:
        for proc in procs.values():
            with NodeClient(proc.address) as client:
                for key, path, sha in saved.values():
                    client.load_partition(str(path), key, sha)
        yield {"procs": procs, "division": division, "x": x}
    finally:
        for proc in procs.values():
            if proc.process.poll() is None:
                os.kill(proc.process.pid, signal.SIGCONT)
            proc.stop()


def test_sigstopped_replica_is_left_within_the_attempt_budget_and_each_result_is_delivered_once(
    replicas: dict,  # type: ignore[type-arg]
) -> None:
    procs: dict[str, NodeProcess] = replicas["procs"]
    division = replicas["division"]
    sink = ResultSink()
    deliveries: Counter[str] = Counter()
    original = sink.Deliver

    def counting(request_iterator, context):  # type: ignore[no-untyped-def]
        messages = list(request_iterator)
        deliveries[messages[0].header.request_id] += 1
        return original(iter(messages), context)

    sink.Deliver = counting  # type: ignore[method-assign]
    server = grpc.server(ThreadPoolExecutor(8))
    result_sink_pb2_grpc.add_ResultSinkServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    placement = {"p0": [procs["a"].address], "p1": [procs["b1"].address, procs["b2"].address],
                 "p2": [procs["a"].address], "p3": [procs["a"].address]}  # fmt: skip
    route = build_route("diamond", "fp32", division.partitions, placement, sink=f"127.0.0.1:{port}")
    os.kill(procs["b2"].process.pid, signal.SIGSTOP)
    try:
        client = RouteClient()
        deadline_s = 3.0
        ids = [uuid.uuid4().hex for _ in range(40)]
        boxes = {i: sink.expect(i, {"linear"}) for i in ids}

        def one(request_id: str) -> float:
            start = time.monotonic()
            client.run(route, {"x": encode_tensor(replicas["x"], "x")}, request_id=request_id, timeout_s=deadline_s)
            boxes[request_id].wait(deadline_s)
            return time.monotonic() - start

        with ThreadPoolExecutor(8) as pool:
            elapsed = list(pool.map(one, ids))
        assert max(elapsed) < deadline_s, max(elapsed)  # all finished inside their deadline
        os.kill(procs["b2"].process.pid, signal.SIGCONT)
        time.sleep(1.0)  # the resumed replica's late work must not deliver again
        assert all(deliveries[i] == 1 for i in ids), deliveries
        client.close()
    finally:
        os.kill(procs["b2"].process.pid, signal.SIGCONT)
        server.stop(0.5).wait()


def test_a_node_answers_status_while_a_request_is_refused(registered: dict) -> None:  # type: ignore[type-arg]
    a = registered["nodes"][0].address
    with NodeClient(a) as client:
        header = model_server_pb2.RequestHeader(request_id="r" * 200)
        with pytest.raises(Exception, match="request_id"):
            client.process(header, [], timeout_s=2)
        assert client.status().address == a


def test_async_route_client_runs_a_split_request_across_nodes(registered: dict) -> None:  # type: ignore[type-arg]
    import asyncio

    import torch

    from splitinfer.codecs import decode_wire
    from splitinfer.transport.clients import AsyncRouteClient

    a, b = (n.address for n in registered["nodes"])
    division = registered["division"]
    route = build_route("diamond", "fp32", division.partitions, {"p0": [a], "p1": [b], "p2": [a], "p3": [b]})

    async def run() -> torch.Tensor:
        client = AsyncRouteClient()
        try:
            outputs, timings = await client.run(route, {"x": encode_tensor(registered["x"], "x")}, timeout_s=10)
            assert {t.partition.partition for t in timings} == {"p0", "p1", "p2", "p3"}
            return decode_wire(outputs["linear"].head, outputs["linear"].payload)
        finally:
            await client.close()

    with torch.no_grad():
        expected = _diamond_division()[0](registered["x"])
    assert torch.allclose(asyncio.run(run()), expected, atol=1e-5)
