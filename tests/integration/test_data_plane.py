"""The data plane with real node processes: chains, fan-out and joins across nodes, replicas balanced by
load, a sink, backpressure, cancellation, and bad input answered while good requests keep working."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn

from edge_agent.client import NodeClient, RouteClient
from server_node.process import NodeProcess, spawn_node
from splitinfer.codecs import CodecSpec, decode_tensor, encode_tensor
from splitinfer.divider import Division, partition_at
from splitinfer.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from splitinfer.graph import ModelGraph
from splitinfer.program import export_program
from splitinfer.routing import build_route
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.transport.channel import new_server
from splitinfer.transport.sink import ResultSink
from splitinfer.v1 import result_sink_pb2_grpc


class Diamond(nn.Module):
    """stem -> (left, right) -> join: the smallest model with a fan-out and a join."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        joined = torch.relu(self.left(s)) + torch.tanh(self.right(s))
        return self.head(joined.mean(dim=(2, 3)))


def _diamond_division() -> tuple[nn.Module, torch.Tensor, Division]:
    model = Diamond().eval()
    x = torch.randn(1, 3, 16, 16)
    graph = ModelGraph.build(export_program(model, (x,)), (x,))
    names = [n.name for n in graph.nodes]
    cuts = [names.index("relu") + 1, names.index("relu_1") + 1, names.index("tanh") + 1]
    division = partition_at(graph, "diamond", cuts)
    assert [p.name for p in division.partitions] == ["p0", "p1", "p2", "p3"]
    assert sorted(dict(division.partitions[0].successors)["relu"]) == ["p1", "p2"]  # fan-out
    assert {s.name for s in division.partitions[3].inputs} == {"relu_1", "tanh"}  # join
    return model, x, division


def _save(division: Division, root: Path) -> dict[str, tuple[PartitionKey, Path, str]]:
    saved = {}
    for part in division.partitions:
        key = PartitionKey(division.model, "fp32", part.name)
        sha = save_partition_artifact(division.partition_program(part.name), key, root / part.name)
        saved[part.name] = (key, root / part.name, sha)
    return saved


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("cluster")
    model, x, division = _diamond_division()
    saved = _save(division, root / "artifacts")
    nodes = {name: spawn_node(["--torch-threads", "1"]) for name in ("a", "b", "c", "d")}
    nodes["b2"] = spawn_node(["--torch-threads", "1"], slowdown=500.0)  # a slow replica of p1
    try:
        placement = {"p0": ["a"], "p1": ["b"], "p2": ["c"], "p3": ["d"]}
        for part, hosts in {**placement, "p1": ["b", "b2"]}.items():
            key, path, sha = saved[part]
            for host in hosts:
                with NodeClient(nodes[host].address) as client:
                    client.load_partition(str(path), key, sha)
        yield {"model": model, "x": x, "division": division, "nodes": nodes, "saved": saved}
    finally:
        for node in nodes.values():
            node.stop()


def _route(cluster: dict, placement: dict[str, list[str]], **kwargs: object):  # type: ignore[no-untyped-def, type-arg]
    nodes: dict[str, NodeProcess] = cluster["nodes"]
    addresses = {p: [nodes[h].address for h in hosts] for p, hosts in placement.items()}
    division: Division = cluster["division"]
    return build_route("diamond", "fp32", division.partitions, addresses, **kwargs)  # type: ignore[arg-type]


def _expected(cluster: dict) -> torch.Tensor:  # type: ignore[type-arg]
    with torch.no_grad():
        return cluster["model"](cluster["x"])


def test_fan_out_and_join_across_four_nodes(cluster: dict) -> None:  # type: ignore[type-arg]
    route = _route(cluster, {"p0": ["a"], "p1": ["b"], "p2": ["c"], "p3": ["d"]}, default_codec=CodecSpec.parse("lz4"))
    client = RouteClient()
    outputs, timings = client.run(route, {"x": encode_tensor(cluster["x"], "x")})
    assert torch.allclose(decode_tensor(outputs["linear"]), _expected(cluster), atol=1e-5)
    ran = {(t.partition.partition, t.node) for t in timings}
    nodes = cluster["nodes"]
    assert ran == {("p0", nodes["a"].address), ("p1", nodes["b"].address), ("p2", nodes["c"].address),
                   ("p3", nodes["d"].address)}  # fmt: skip
    client.close()


def test_three_node_chain(cluster: dict) -> None:  # type: ignore[type-arg]
    """p0 on a, p1 and p2 on b, p3 on c... here as a chain of three nodes: a -> b (p1, p2) -> d."""
    nodes = cluster["nodes"]
    with NodeClient(nodes["b"].address) as b:
        key, path, sha = cluster["saved"]["p2"]
        b.load_partition(str(path), key, sha)
    route = _route(cluster, {"p0": ["a"], "p1": ["b"], "p2": ["b"], "p3": ["d"]})
    client = RouteClient()
    outputs, timings = client.run(route, {"x": encode_tensor(cluster["x"], "x")})
    assert torch.allclose(decode_tensor(outputs["linear"]), _expected(cluster), atol=1e-5)
    assert [t.node for t in sorted(timings, key=lambda t: t.partition.partition)] == [
        nodes["a"].address, nodes["b"].address, nodes["b"].address, nodes["d"].address]  # fmt: skip
    client.close()


def test_outputs_delivered_to_a_sink(cluster: dict) -> None:  # type: ignore[type-arg]
    sink = ResultSink()
    server = new_server(4)
    result_sink_pb2_grpc.add_ResultSinkServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        route = _route(cluster, {"p0": ["a"], "p1": ["b"], "p2": ["c"], "p3": ["d"]}, sink=f"127.0.0.1:{port}")
        request_id = uuid.uuid4().hex
        box = sink.expect(request_id, {"linear"})
        client = RouteClient()
        outputs, _ = client.run(route, {"x": encode_tensor(cluster["x"], "x")}, request_id=request_id)
        assert outputs == {}  # nothing travels back along the calls
        delivered = box.wait(10)
        assert torch.allclose(decode_tensor(delivered["linear"]), _expected(cluster), atol=1e-5)
        assert {t.partition.partition for t in box.timings} == {"p3"}
        client.close()
    finally:
        server.stop(1).wait()


def test_replicas_are_balanced_by_load(cluster: dict) -> None:  # type: ignore[type-arg]
    """p1 lives on b (fast) and b2 (500x slower): node a's power-of-two choice sends most work to b."""
    nodes = cluster["nodes"]
    route = _route(cluster, {"p0": ["a"], "p1": ["b", "b2"], "p2": ["c"], "p3": ["d"]})
    before = {h: _completed(nodes[h], "p1") for h in ("b", "b2")}
    client = RouteClient()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: client.run(route, {"x": encode_tensor(cluster["x"], "x")}), range(40)))
    assert all(torch.allclose(decode_tensor(o["linear"]), _expected(cluster), atol=1e-5) for o, _ in results)
    served = {h: _completed(nodes[h], "p1") - before[h] for h in ("b", "b2")}
    assert sum(served.values()) == 40 and served["b2"] >= 1, served  # both replicas are used...
    assert served["b"] > 2 * served["b2"], served  # ...but the loaded one much less
    client.close()


def _completed(node: NodeProcess, partition: str) -> int:
    with NodeClient(node.address) as client:
        return next(p.completed for p in client.status().partitions if p.partition.partition == partition)


def test_bad_requests_fail_cleanly_while_good_ones_succeed(cluster: dict) -> None:  # type: ignore[type-arg]
    route = _route(cluster, {"p0": ["a"], "p1": ["b"], "p2": ["c"], "p3": ["d"]})
    good = {"x": encode_tensor(cluster["x"], "x")}
    bad = {"x": encode_tensor(cluster["x"][:, :2], "x")}
    client = RouteClient()
    errors: list[BaseException] = []

    def run(payload: dict) -> object:  # type: ignore[type-arg]
        try:
            return client.run(route, payload)
        except Exception as exc:
            errors.append(exc)
            return None

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, [good, bad] * 6))
    assert len(errors) == 6 and all(isinstance(e, InvalidArgument) and "must be" in str(e) for e in errors)
    assert sum(1 for r in results if r is not None) == 6
    client.close()


def test_join_with_a_missing_branch_times_out_with_a_clear_error(cluster: dict) -> None:  # type: ignore[type-arg]
    nodes = cluster["nodes"]
    route = _route(cluster, {"p0": ["a"], "p1": ["b"], "p2": ["c"], "p3": ["d"]})
    from splitinfer.v1 import model_server_pb2

    header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route, entry_step=3)
    left = encode_tensor(torch.randn(1, 8, 16, 16), "relu_1")
    with NodeClient(nodes["d"].address) as d, pytest.raises(DeadlineExceeded):
        d.process(header, [left], timeout_s=1.5)  # "tanh" never comes: bounded wait, then an error


def test_full_node_answers_resource_exhausted(tmp_path: Path) -> None:
    """max_in_flight=1 and a slow partition: a second concurrent request is refused, not queued forever."""
    _, x, division = _diamond_division()
    saved = _save(division, tmp_path)
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"max_in_flight": 1}))
    node = spawn_node(["--config", str(config)], slowdown=2000.0)
    try:
        key, path, sha = saved["p0"]
        from splitinfer.v1 import route_pb2

        ref = route_pb2.PartitionRef(model="diamond", variant="fp32", partition="p0")
        route = route_pb2.Route(steps=[route_pb2.RouteStep(partition=ref, addresses=[node.address])])
        with NodeClient(node.address) as client:
            client.load_partition(str(path), key, sha)
            from splitinfer.v1 import model_server_pb2

            def slow() -> None:
                header = model_server_pb2.RequestHeader(request_id="slow", route=route)
                client.process(header, [encode_tensor(x, "x")], timeout_s=30)

            thread = threading.Thread(target=slow)
            thread.start()
            deadline = time.monotonic() + 10
            while client.status().queue_length == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            status = client.status()  # answered while the node is full
            assert status.in_flight == 1 and status.queue_length == 1
            assert status.partitions[0].queue_length == 1
            header = model_server_pb2.RequestHeader(request_id="second", route=route)
            with pytest.raises(ResourceExhausted, match="in flight"):
                client.process(header, [encode_tensor(x, "x")], timeout_s=10)
            assert client.status().refused >= 1
            thread.join()
    finally:
        node.stop()


def test_cancelled_request_is_dropped_downstream(cluster: dict) -> None:  # type: ignore[type-arg]
    """A deadline shorter than the slow replica's work: the caller gets DEADLINE_EXCEEDED, and the nodes stay
    healthy and serve the next request."""
    route = _route(cluster, {"p0": ["a"], "p1": ["b2"], "p2": ["c"], "p3": ["d"]})
    client = RouteClient()
    with pytest.raises(DeadlineExceeded):
        client.run(route, {"x": encode_tensor(cluster["x"], "x")}, timeout_s=0.05)
    fast = _route(cluster, {"p0": ["a"], "p1": ["b"], "p2": ["c"], "p3": ["d"]})
    outputs, _ = client.run(fast, {"x": encode_tensor(cluster["x"], "x")})
    assert torch.allclose(decode_tensor(outputs["linear"]), _expected(cluster), atol=1e-5)
    assert Counter(n.process.poll() for n in cluster["nodes"].values()) == Counter({None: 5})
    client.close()
