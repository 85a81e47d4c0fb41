"""Distributed tracing across real processes: etcd, a front-end and two nodes, each exporting its spans over
OTLP (configured only by the standard OTEL_* variables) to a collector the test runs. One request through the
front-end yields one trace: the front-end's span (with the planner's decision), the first node's span as its
child, the second node's span as a child of the first's, and a span per step with its queue, decode, compute
and encode times."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from server_node.process import NodeProcess, spawn_node
from splitinfer.divider import partition_at
from splitinfer.frontend.client import FrontEndClient
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.registry import EtcdRegistry
from splitinfer.registry.etcd_server import start_etcd
from splitinfer.runtime import PartitionKey
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import plan_pb2
from splitinfer.zoo import build
from tests.integration._otlp import CollectedSpan, Collector

MODEL = "tiny_cnn"
THIN = plan_pb2.DeviceState(device_id="camera-1", compute_flops=0, uplink_mbps=100, rtt_ms=1)


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.stop()


def _frontend(root: Path, pool: ModelPool, registry: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port_file = root / "frontend.port"
    log = (root / "frontend.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "splitinfer.frontend", "--pool-dir", str(pool.root), "--registry", registry,
         "--results-db", str(root / "results.db"), "--port-file", str(port_file)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert process.poll() is None and time.monotonic() < deadline, (root / "frontend.log").read_text()[-2000:]
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text()}"


def test_one_request_is_one_trace_across_the_front_end_and_both_nodes(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # what spawn_node passes on to the nodes
    model, example = build(MODEL)
    program = export_program(model, example)
    graph = ModelGraph.build(program, example)
    cut = [c.position for c in narrow_cuts(graph)][1:-1][:1]
    pool = ModelPool(tmp_path / "pool")
    sha = pool.add_division(partition_at(graph, MODEL, cut), variant="fp32", division_name="default")
    etcd = start_etcd(tmp_path / "etcd")
    nodes: list[NodeProcess] = []
    frontend = None
    registry = EtcdRegistry(etcd.endpoint)
    try:
        for _ in range(2):
            nodes.append(spawn_node(["--registry", f"etcd://{etcd.endpoint}", "--torch-threads", "1"],
                                    log_dir=tmp_path))  # fmt: skip
        # p0 only on the first node, p1 only on the second: the request has to cross both.
        for node, part in zip(nodes, pool.division(sha).partitions, strict=True):
            target = tmp_path / "exports" / part.name
            part_sha = pool.export_partition(sha, part.name, target)
            with NodeClient(node.address) as client:
                client.load_partition(str(target), PartitionKey(MODEL, "fp32", part.name), part_sha)
        deadline = time.monotonic() + 20
        while not all(registry.replicas(f"{MODEL}@fp32/{p.name}") for p in pool.division(sha).partitions):
            assert time.monotonic() < deadline, registry.servers()
            time.sleep(0.1)
        frontend, address = _frontend(tmp_path, pool, f"etcd://{etcd.endpoint}", {**os.environ, **env})
        with FrontEndClient(address) as client:
            plan = client.plan(MODEL, THIN, timeout_s=30)
            outputs, _ = client.infer(plan, THIN, {program.input_names[0]: example[0]}, request_id="traced-1",
                                      timeout_s=30)  # fmt: skip
        with torch.no_grad():
            assert torch.allclose(next(iter(outputs.values())), model(example[0]), atol=1e-4)

        def complete(spans: list[CollectedSpan]) -> bool:
            names = [s.name for s in spans]
            return names.count("splitinfer.node.process") >= 2 and "splitinfer.frontend.request" in names and \
                sum(n.startswith("splitinfer.step ") for n in names) >= 2  # fmt: skip

        spans = collector.wait_for(complete)
        assert complete(spans), [(s.service, s.name) for s in spans]
    finally:
        if frontend is not None:
            frontend.terminate()
            frontend.wait(20)
        for node in nodes:
            node.stop()
        registry.close()
        etcd.cleanup()

    front = next(s for s in spans if s.name == "splitinfer.frontend.request")
    assert front.service == "splitinfer-frontend" and front.attributes["splitinfer.request_id"] == "traced-1"
    assert front.attributes["splitinfer.model"] == MODEL and "p0@" in str(front.attributes["splitinfer.plan"])
    assert front.attributes["splitinfer.solver"] and float(front.attributes["splitinfer.predicted_latency_ms"]) > 0
    hops = [s for s in spans if s.name == "splitinfer.node.process" and s.trace_id == front.trace_id]
    first = next(s for s in hops if s.parent_span_id == front.span_id)
    second = next(s for s in hops if s.parent_span_id == first.span_id)
    assert first.service == second.service == "splitinfer-node"
    assert first.attributes["splitinfer.node"] != second.attributes["splitinfer.node"]
    steps = {s.attributes["splitinfer.partition"]: s for s in spans if s.name.startswith("splitinfer.step ")}
    assert set(steps) == {f"{MODEL}@fp32/p0", f"{MODEL}@fp32/p1"}
    assert steps[f"{MODEL}@fp32/p0"].parent_span_id == first.span_id
    assert steps[f"{MODEL}@fp32/p1"].parent_span_id == second.span_id
    for step in steps.values():
        assert step.trace_id == front.trace_id
        assert {"splitinfer.queue_ms", "splitinfer.decode_ms", "splitinfer.compute_ms",
                "splitinfer.encode_ms"} <= set(step.attributes)  # fmt: skip
        assert float(step.attributes["splitinfer.compute_ms"]) > 0
