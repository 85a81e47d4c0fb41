"""The etcd registry against a real etcd: register, watch-driven cache, leases expiring, outage survived."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from splitinfer.registry import EtcdRegistry, ServerRecord
from splitinfer.registry.etcd_server import EtcdServer, start_etcd


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = start_etcd()
    try:
        yield server
    finally:
        server.cleanup()


def _eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_register_update_and_index(etcd: EtcdServer) -> None:
    server_side, client_side = EtcdRegistry(etcd.endpoint), EtcdRegistry(etcd.endpoint)
    try:
        version = client_side.version
        reg = server_side.register(ServerRecord("10.0.0.1:1", partitions=("m@fp32/p0",)), ttl_s=5)
        assert _eventually(lambda: "10.0.0.1:1" in client_side.servers())
        assert client_side.version > version
        reg.update(ServerRecord("10.0.0.1:1", partitions=("m@fp32/p0", "m@fp32/p1"), in_flight=3))
        assert _eventually(lambda: [r.address for r in client_side.replicas("m@fp32/p1")] == ["10.0.0.1:1"])
        assert client_side.servers()["10.0.0.1:1"].in_flight == 3
        reg.close()
        assert _eventually(lambda: "10.0.0.1:1" not in client_side.servers(), timeout_s=3)
    finally:
        server_side.close()
        client_side.close()


def test_dead_server_disappears_within_ttl(etcd: EtcdServer) -> None:
    server_side, client_side = EtcdRegistry(etcd.endpoint), EtcdRegistry(etcd.endpoint)
    try:
        reg = server_side.register(ServerRecord("10.0.0.2:1"), ttl_s=2)
        assert _eventually(lambda: "10.0.0.2:1" in client_side.servers())
        # The server dies: its keepalive stops without revoking (no goodbye).
        reg._stop.set()  # type: ignore[attr-defined]
        reg._thread.join()  # type: ignore[attr-defined]
        start = time.monotonic()
        assert _eventually(lambda: "10.0.0.2:1" not in client_side.servers(), timeout_s=6)
        assert time.monotonic() - start <= 2 + 1.5  # within the TTL (plus etcd's lease check granularity)
    finally:
        server_side.close()
        client_side.close()


def test_cache_survives_an_etcd_outage_and_recovers(etcd: EtcdServer) -> None:
    server_side, client_side = EtcdRegistry(etcd.endpoint), EtcdRegistry(etcd.endpoint)
    try:
        reg = server_side.register(ServerRecord("10.0.0.3:1", partitions=("m@fp32/p0",)), ttl_s=3)
        assert _eventually(lambda: "10.0.0.3:1" in client_side.servers())
        etcd.stop()
        time.sleep(1.5)
        # etcd is gone: the client still answers from its cache.
        assert [r.address for r in client_side.replicas("m@fp32/p0")] == ["10.0.0.3:1"]
        etcd.restart()
        reg.update(ServerRecord("10.0.0.3:1", partitions=("m@fp32/p0",), in_flight=7))
        assert _eventually(lambda: client_side.servers().get("10.0.0.3:1", ServerRecord("")).in_flight == 7, 15)
        assert _eventually(lambda: client_side.healthy, 10)
        reg.close()
    finally:
        server_side.close()
        client_side.close()


def test_node_process_registers_reports_partitions_and_vanishes_when_killed(
    etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import json

    from edge_agent.client import NodeClient
    from server_node.process import spawn_node
    from splitinfer.divider import partition_at
    from splitinfer.graph import ModelGraph
    from splitinfer.program import export_program
    from splitinfer.runtime import PartitionKey, save_partition_artifact
    from splitinfer.zoo import build

    root = tmp_path_factory.mktemp("node")
    config = root / "node.json"
    config.write_text(json.dumps({"registry_ttl_s": 2, "status_interval_s": 0.3}))
    model, example = build("tiny_cnn")
    graph = ModelGraph.build(export_program(model, example), example)
    division = partition_at(graph, "tiny_cnn", [4])
    key = PartitionKey("tiny_cnn", "fp32", "p1")
    sha = save_partition_artifact(division.partition_program("p1"), key, root / "p1")
    node = spawn_node(["--config", str(config), "--registry", f"etcd://{etcd.endpoint}"])
    registry = EtcdRegistry(etcd.endpoint)
    try:
        assert _eventually(lambda: node.address in registry.servers())
        with NodeClient(node.address) as client:
            client.load_partition(str(root / "p1"), key, sha)
        assert _eventually(lambda: [r.address for r in registry.replicas(str(key))] == [node.address])
        assert registry.servers()[node.address].compute_flops > 0
        node.kill()  # SIGKILL: no goodbye, the lease must expire
        start = time.monotonic()
        assert _eventually(lambda: node.address not in registry.servers(), timeout_s=8)
        assert time.monotonic() - start <= 2 + 1.5
    finally:
        node.stop()
        registry.close()
