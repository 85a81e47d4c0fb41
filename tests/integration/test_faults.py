"""Faults survived, with real processes: a node killed mid-request, etcd gone for 30 s, the front-end
restarted. Each test states the promise it checks (docs/reliability.md lists them)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from server_node.process import NodeProcess, spawn_node
from splitinfer.divider import partition_at
from splitinfer.errors import Unavailable
from splitinfer.frontend.client import FrontEndClient
from splitinfer.frontend.server import FrontEndConfig, RunningFrontEnd, start_frontend
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.registry import EtcdRegistry
from splitinfer.registry.etcd_server import EtcdServer, start_etcd
from splitinfer.runtime import PartitionKey
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import plan_pb2
from splitinfer.zoo import build

MODEL = "tiny_cnn"
#: A thin client: every partition runs on the servers.
THIN = plan_pb2.DeviceState(device_id="camera-1", compute_flops=0, uplink_mbps=100, rtt_ms=1)


def _pool(root: Path) -> tuple[ModelPool, str, torch.nn.Module, torch.Tensor, str]:
    model, example = build(MODEL)
    program = export_program(model, example)
    graph = ModelGraph.build(program, example)
    cuts = [c.position for c in narrow_cuts(graph)][1:-1]
    pool = ModelPool(root / "pool")
    sha = pool.add_division(partition_at(graph, MODEL, cuts[:1]), variant="fp32", division_name="default")
    return pool, sha, model, example[0], program.input_names[0]


def _load_everywhere(pool: ModelPool, sha: str, root: Path, nodes: list[NodeProcess]) -> None:
    for part in pool.manifest(sha)["partitions"]:
        target = root / "exports" / part["name"]
        part_sha = pool.export_partition(sha, part["name"], target)
        for node in nodes:
            with NodeClient(node.address) as client:
                client.load_partition(str(target), PartitionKey(MODEL, "fp32", part["name"]), part_sha)


def _wait_for(registry: EtcdRegistry, count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(registry.replicas(f"{MODEL}@fp32/p1")) < count:
        assert time.monotonic() < deadline, f"registry lists {registry.servers()}"
        time.sleep(0.1)


def _infer(address: str, x: torch.Tensor, input_name: str, request_id: str, timeout_s: float = 30.0) -> torch.Tensor:
    """One request through the front-end as a thin client: plan, then Infer; returns the output."""
    with FrontEndClient(address) as client:
        plan = client.plan(MODEL, THIN, timeout_s=timeout_s)
        outputs, _ = client.infer(plan, THIN, {input_name: x}, request_id=request_id, timeout_s=timeout_s)
    [output] = outputs.values()
    return output


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict]:  # type: ignore[type-arg]
    etcd = start_etcd(tmp_path / "etcd")
    pool, sha, model, x, input_name = _pool(tmp_path)
    nodes: list[NodeProcess] = []
    state: dict = {}  # type: ignore[type-arg]
    registry = EtcdRegistry(etcd.endpoint)
    try:
        # Slowed down so that requests are still running when a node is killed.
        for _ in range(2):
            nodes.append(spawn_node(["--registry", f"etcd://{etcd.endpoint}", "--torch-threads", "1", "--config",
                                     str(_slow_config(tmp_path))], log_dir=tmp_path, slowdown=300.0))  # fmt: skip
        _load_everywhere(pool, sha, tmp_path, nodes)
        _wait_for(registry, 2)
        state["frontend"] = start_frontend(
            FrontEndConfig(pool_dir=str(pool.root), results_db=str(tmp_path / "results.db")),
            registry=EtcdRegistry(etcd.endpoint),
        )
        with torch.no_grad():
            expected = model(x)
        state.update(etcd=etcd, nodes=nodes, x=x, input=input_name, expected=expected, registry=registry,
                     root=tmp_path, pool=pool, sha=sha)  # fmt: skip
        yield state
    finally:
        if "frontend" in state:
            state["frontend"].stop(0.5)
        for node in nodes:
            node.stop()
        registry.close()
        etcd.cleanup()


def _slow_config(root: Path) -> Path:
    path = root / "slow-node.json"
    path.write_text('{"compute_slots": 4, "registry_ttl_s": 3.0, "status_interval_s": 0.5}')
    return path


def test_node_killed_mid_request_is_retried_on_a_replica_and_nothing_is_lost_or_stored_twice(cluster: dict) -> None:  # type: ignore[type-arg]
    frontend: RunningFrontEnd = cluster["frontend"]
    ids = [f"kill-{k}-{uuid.uuid4().hex[:6]}" for k in range(6)]
    with ThreadPoolExecutor(len(ids)) as workers:
        futures = [workers.submit(_infer, frontend.address, cluster["x"], cluster["input"], i) for i in ids]
        time.sleep(0.4)  # every request is in flight on the nodes
        victim: NodeProcess = cluster["nodes"][0]
        victim.kill()
        outputs = [f.result(timeout=60) for f in futures]
    for output in outputs:
        torch.testing.assert_close(output, cluster["expected"], rtol=1e-4, atol=1e-4)
    assert frontend.store is not None
    assert frontend.store.count() == len(ids)  # each request stored once
    # A retry of a finished request is answered from the store, not run again.
    before = frontend.store.count()
    torch.testing.assert_close(_infer(frontend.address, cluster["x"], cluster["input"], ids[0]), outputs[0])
    assert frontend.store.count() == before

    # With no replica left, a new request fails with a clear status instead of hanging.
    cluster["nodes"][1].kill()
    with pytest.raises(Unavailable):
        _infer(frontend.address, cluster["x"], cluster["input"], "after-both-died", timeout_s=20)


OUTAGE_S = 30.0


def test_etcd_down_for_30_s_the_data_plane_serves_from_cache_and_registration_recovers(cluster: dict) -> None:  # type: ignore[type-arg]
    etcd: EtcdServer = cluster["etcd"]
    frontend: RunningFrontEnd = cluster["frontend"]
    etcd.stop()
    outage_start = time.monotonic()
    # A node started during the outage cannot register yet; it must do so once etcd is back.
    late = spawn_node(["--registry", f"etcd://{etcd.endpoint}", "--torch-threads", "1"], log_dir=cluster["root"])
    cluster["nodes"].append(late)
    served = 0
    while time.monotonic() - outage_start < OUTAGE_S:
        output = _infer(frontend.address, cluster["x"], cluster["input"], f"outage-{served}")
        torch.testing.assert_close(output, cluster["expected"], rtol=1e-4, atol=1e-4)
        served += 1
        time.sleep(1.0)
    assert served >= 10
    etcd.restart()
    # Registration and watches recover without restarting anything: the late node appears in the
    # front-end's registry view, and the old nodes' leases are back.
    deadline = time.monotonic() + 30
    while not all(n.address in frontend.registry.servers() for n in cluster["nodes"]):
        assert time.monotonic() < deadline, f"nodes never re-registered: {sorted(frontend.registry.servers())}"
        time.sleep(0.2)
    assert late.address in frontend.registry.servers()
    output = _infer(frontend.address, cluster["x"], cluster["input"], "after-outage")
    torch.testing.assert_close(output, cluster["expected"], rtol=1e-4, atol=1e-4)


def test_front_end_restart_keeps_stored_results_and_agents_reconnect(cluster: dict) -> None:  # type: ignore[type-arg]
    frontend: RunningFrontEnd = cluster["frontend"]
    port, root = frontend.port, cluster["root"]
    agent = EdgeAgent(
        AgentConfig(device_id="phone-r", frontend=frontend.address, pool=frontend.address,
                    cache_dir=str(root / "agent"), emulated_battery=True, emulated_uplink_mbps=50.0, plan_ttl_s=0.0,
                    connect_timeout_s=1.0),
        compute_flops=5e6,
    )  # fmt: skip
    first = agent.infer(MODEL, {cluster["input"]: cluster["x"]})
    assert not first.device_only_fallback, first.reason
    frontend.stop(0.5)
    down = agent.infer(MODEL, {cluster["input"]: cluster["x"]})
    assert down.device_only_fallback  # served on the device while the front-end is gone
    torch.testing.assert_close(down.outputs[next(iter(down.outputs))], cluster["expected"], rtol=1e-4, atol=1e-4)
    restarted = start_frontend(
        FrontEndConfig(port=port, pool_dir=str(cluster["pool"].root), results_db=str(root / "results.db")),
        registry=EtcdRegistry(cluster["etcd"].endpoint),
    )
    cluster["frontend"] = restarted
    assert restarted.store is not None
    assert restarted.store.get(first.request_id).device_id == "phone-r"  # stored before the restart, intact
    deadline = time.monotonic() + 20
    while True:  # the same agent, same channel: it reconnects by itself
        again = agent.infer(MODEL, {cluster["input"]: cluster["x"]})
        if not again.device_only_fallback:
            break
        assert time.monotonic() < deadline, again.reason
        time.sleep(0.5)
    assert restarted.store.get(again.request_id).device_id == "phone-r"


def test_concurrent_retries_of_one_request_id_store_it_once(cluster: dict) -> None:  # type: ignore[type-arg]
    frontend: RunningFrontEnd = cluster["frontend"]
    barrier = threading.Barrier(4)

    def send() -> torch.Tensor:
        barrier.wait()
        return _infer(frontend.address, cluster["x"], cluster["input"], "same-id")

    with ThreadPoolExecutor(4) as workers:
        outputs = list(workers.map(lambda _: send(), range(4)))
    for output in outputs:
        torch.testing.assert_close(output, outputs[0])
    assert frontend.store is not None and frontend.store.count() == 1
