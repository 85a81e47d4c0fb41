"""The whole system: edge agent -> front-end -> chained server nodes with a fan-out -> result store.

Real processes for etcd and the server nodes; the front-end and the agent run in this process on real
gRPC ports. Covers: the split output equals the whole model, the stored result is readable by request id
and by device, the plan follows emulated bandwidth and battery changes, and the agent falls back to
device-only (and says so) when the front-end is gone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from edge_agent.agent import DevicePlan, EdgeAgent
from edge_agent.config import AgentConfig
from server_node.process import NodeProcess, spawn_node
from splitinfer.divider import partition_at
from splitinfer.frontend.server import FrontEndConfig, RunningFrontEnd, start_frontend
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.registry import EtcdRegistry
from splitinfer.registry.etcd_server import EtcdServer, start_etcd
from splitinfer.runtime import PartitionKey
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import plan_pb2, result_store_pb2, result_store_pb2_grpc
from splitinfer.zoo import build


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("system")
    etcd: EtcdServer = start_etcd(root / "etcd")
    model, example = build("two_heads")
    graph = ModelGraph.build(export_program(model, example), example)
    names = [n.name for n in graph.nodes]
    backbone_end = names.index("relu_1") + 1
    segment_start = next(i for i, n in enumerate(graph.nodes) if i > backbone_end and n.op == "aten.conv2d.default")
    division = partition_at(graph, "two_heads", [backbone_end, segment_start])
    pool = ModelPool(root / "pool")
    sha = pool.add_division(division, variant="fp32", division_name="default", task="two-heads", accuracy=0.9)
    nodes: dict[str, NodeProcess] = {}
    try:
        for name in ("a", "b"):
            nodes[name] = spawn_node(["--registry", f"etcd://{etcd.endpoint}", "--torch-threads", "1"])
        for node_name, parts in (("a", ["p0"]), ("b", ["p1", "p2"])):
            with NodeClient(nodes[node_name].address) as client:
                for part in parts:
                    part_sha = pool.export_partition(sha, part, root / "export" / part)
                    client.load_partition(
                        str(root / "export" / part), PartitionKey("two_heads", "fp32", part), part_sha
                    )
        registry = EtcdRegistry(etcd.endpoint)
        deadline = time.monotonic() + 15
        while len(registry.replicas("two_heads@fp32/p2")) < 1 or len(registry.replicas("two_heads@fp32/p0")) < 1:
            assert time.monotonic() < deadline, "nodes did not show up in the registry"
            time.sleep(0.1)
        frontend = start_frontend(
            FrontEndConfig(pool_dir=str(root / "pool"), results_db=str(root / "results.db")), registry=registry
        )
        yield {"model": model, "x": example[0], "frontend": frontend, "nodes": nodes, "root": root}
    finally:
        for node in nodes.values():
            node.stop()
        etcd.cleanup()


def _agent(system: dict, compute_flops: float = 5e7, **overrides: object) -> EdgeAgent:  # type: ignore[type-arg]
    frontend: RunningFrontEnd = system["frontend"]
    config = AgentConfig(**{  # type: ignore[arg-type]
        "device_id": "phone-7", "frontend": frontend.address, "pool": frontend.address,
        "cache_dir": str(system["root"] / "agent"), "emulated_battery": True, "emulated_uplink_mbps": 50.0,
        "plan_ttl_s": 0.0, **overrides,
    })  # fmt: skip
    return EdgeAgent(config, compute_flops=compute_flops)  # a slow device: the servers are worth it


def _server_plan(system: dict, device_id: str) -> DevicePlan:  # type: ignore[type-arg]
    """A plan that sends the model's input to the servers, for a device far too slow to run any of the model
    itself (however slow a loaded machine makes the servers look). Planned again for up to 10 s: under load
    (a fresh-clone CI run, and once in a combined local run) the planner sometimes kept the whole model on
    such a device; the cause is not pinned down, and the assertion names the plan's reason if it persists."""
    agent = _agent(system, compute_flops=1e4, device_id=device_id)
    deadline = time.monotonic() + 10
    try:
        while True:
            plan = agent.plan("two_heads", plan_pb2.Requirements(min_accuracy=0.9), fresh=True)
            if list(plan.entry_tensors) == ["x"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        agent.close()
    assert list(plan.entry_tensors) == ["x"], (plan.plan.reason, plan.plan.placements)
    return plan


def _close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 0.02) -> bool:
    return float((actual - expected).abs().max()) <= tolerance * float(expected.abs().max())


def _expected(system: dict) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[type-arg]
    with torch.no_grad():
        return system["model"](system["x"])


def test_split_run_equals_the_whole_model_and_is_stored(system: dict) -> None:  # type: ignore[type-arg]
    agent = _agent(system, plan_ttl_s=60.0)  # a retry reuses its plan
    exact = plan_pb2.Requirements(min_accuracy=0.9)  # the variant's own accuracy: no lossy codec allowed
    result = agent.infer("two_heads", {"x": system["x"]}, exact, request_id="req-1")
    assert result.plan is not None and not any(c.codec.is_lossy for c in result.plan.crossings)
    assert not result.device_only_fallback and result.plan is not None and result.plan.route is None
    # The device never saw the route: the front-end kept it, under the plan id the device sent.
    route = system["frontend"].plans.get(result.plan_id, "phone-7", "phone-7").plan.route
    assert route is not None
    assert any(len(out.consumer_steps) == 2 for step in route.steps for out in step.outputs)  # fan-out
    assert {p.where for p in result.plan.placements if not p.on_device} == {
        system["nodes"]["a"].address, system["nodes"]["b"].address}  # fmt: skip
    classify, segment = _expected(system)
    assert torch.allclose(result.outputs["linear"], classify, atol=1e-4)
    assert torch.allclose(result.outputs["conv2d_3"], segment, atol=1e-4)

    with grpc.insecure_channel(system["frontend"].address) as channel:
        store = result_store_pb2_grpc.ResultStoreServiceStub(channel)
        request = result_store_pb2.GetResultRequest(request_id="req-1", caller="phone-7")
        stored = store.GetResult(request, timeout=10).result
        assert stored.device_id == "phone-7" and stored.caller == "phone-7" and stored.model == "two_heads"
        assert stored.outputs and len(stored.input_digest) == 64
        by_device = store.QueryResults(result_store_pb2.QueryResultsRequest(device_id="phone-7"), timeout=10)
        assert "req-1" in [r.request_id for r in by_device.results]
    # A retry with the same request id is answered from the store, not run or stored twice.
    again = agent.infer("two_heads", {"x": system["x"]}, exact, request_id="req-1")
    assert torch.allclose(again.outputs["linear"], classify, atol=1e-4)
    assert system["frontend"].store.count() == 1
    agent.close()


def test_plan_follows_bandwidth_and_battery(system: dict) -> None:  # type: ignore[type-arg]
    agent = _agent(system)
    fast = agent.infer("two_heads", {"x": system["x"]})
    agent.network.emulated_uplink_mbps = 0.005  # the link collapses: uploading 12 KB now takes ~20 s
    slow = agent.infer("two_heads", {"x": system["x"]})
    assert fast.plan is not None and slow.plan is not None
    assert len(slow.plan.device_partitions) > len(fast.plan.device_partitions)
    agent.network.emulated_uplink_mbps = 50.0
    after_slow = agent.infer("two_heads", {"x": system["x"]})  # carries the timings of the device's partitions
    assert after_slow.plan is not None
    # The partitions the device ran were timed and reported with the next request: the front-end's planner
    # now has a per-partition device cost for this device (it learns that this "slow" device is not slow).
    from splitinfer.planner import DeviceProfile

    profile = system["frontend"].planner.calibration.device("phone-7", DeviceProfile(1.0, 1.0, 1.0), "two_heads")
    assert any(key.startswith("two_heads@fp32/") for key, _ in profile.partition_factors), profile
    # Each request's report (its measured inference latency, cold costs apart) rode with the next call: the
    # per-request overhead of the device's offloaded plans was learnt against the servers' own timings.
    assert profile.offload_overhead_ms != 0.0, profile
    assert fast.cold_ms > 0 and 0 < fast.inference_ms < fast.total_ms  # its Plan call and pulls were cold
    # Battery: a device the planner has no measurements of yet, so only the battery differs.
    agent = _agent(system, device_id="phone-8")
    battery_full = agent.infer("two_heads", {"x": system["x"]}, plan_pb2.Requirements())
    agent.battery.set(percent=3.0, charging=False)
    battery_low = agent.infer(
        "two_heads", {"x": system["x"]}, plan_pb2.Requirements(objective=plan_pb2.OBJECTIVE_ENERGY)
    )
    assert battery_full.plan is not None and battery_low.plan is not None
    assert len(battery_low.plan.device_partitions) <= len(battery_full.plan.device_partitions)
    assert agent.plans_made >= 2
    classify, _ = _expected(system)
    for result in (fast, slow, battery_full, battery_low):  # lossy codecs were allowed here
        assert _close(result.outputs["linear"], classify)
    agent.close()


def test_apps_use_the_agent_through_its_local_api_and_cli(system: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    import subprocess
    import sys

    import numpy as np

    from edge_agent.service import serve_agent

    agent = _agent(system)
    server, address = serve_agent(agent, f"unix:{tmp_path / 'agent.sock'}")
    try:
        np.save(tmp_path / "x.npy", system["x"].numpy())
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent", "infer", "--agent", address, "--model", "two_heads",
             "--input", f"x={tmp_path / 'x.npy'}", "--min-accuracy", "0.9", "--out", str(tmp_path / "out.npz")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "two_heads@fp32" in result.stdout
        outputs = np.load(tmp_path / "out.npz")
        classify, _ = _expected(system)
        assert np.allclose(outputs["linear"], classify.numpy(), atol=1e-4)
        bad = subprocess.run(
            [sys.executable, "-m", "edge_agent", "infer", "--agent", address, "--model", "nope",
             "--input", f"x={tmp_path / 'x.npy'}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert bad.returncode == 2 and "NOT_FOUND" in bad.stderr
    finally:
        server.stop(1).wait()
        agent.close()


def test_front_end_refuses_bad_infer_streams_with_clear_codes(system: dict) -> None:  # type: ignore[type-arg]
    from splitinfer.codecs import encode_tensor
    from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc

    plan = _server_plan(system, "phone-bad-input")  # the checks below send "x"
    tensor = encode_tensor(system["x"], "x")

    def infer(messages: list) -> grpc.StatusCode:  # type: ignore[type-arg]
        with grpc.insecure_channel(system["frontend"].address) as channel:
            stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
            try:
                list(stub.Infer(iter(messages), timeout=30))
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK

    device = plan_pb2.DeviceState(device_id="phone-bad-input")
    header = frontend_pb2.InferHeader(request_id="bad-1", device=device, plan_id=plan.plan_id)
    assert infer([frontend_pb2.InferRequest(tensor=tensor)]) == grpc.StatusCode.INVALID_ARGUMENT  # no header
    no_plan = frontend_pb2.InferHeader(request_id="bad-2", device=device)
    assert infer([frontend_pb2.InferRequest(header=no_plan)]) == grpc.StatusCode.INVALID_ARGUMENT
    truncated = frontend_pb2.InferRequest(tensor=tensor)
    truncated.tensor.payload = truncated.tensor.payload[:10]
    assert infer([frontend_pb2.InferRequest(header=header), truncated]) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = frontend_pb2.InferHeader(request_id="bad-3", device=device, plan_id="not-a-plan-of-this-front-end")
    assert infer([frontend_pb2.InferRequest(header=unknown), frontend_pb2.InferRequest(tensor=tensor)]) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    stray = frontend_pb2.InferRequest(tensor=encode_tensor(system["x"], "not_an_entry"))
    assert infer([frontend_pb2.InferRequest(header=header), stray]) == grpc.StatusCode.INVALID_ARGUMENT
    # The good path still works afterwards.
    good = _agent(system).infer("two_heads", {"x": system["x"]}, plan_pb2.Requirements(min_accuracy=0.9))
    assert not good.device_only_fallback


def test_infer_once_answers_as_infer_does_and_refuses_the_same(system: dict) -> None:  # type: ignore[type-arg]
    """InferOnce (one message each way) runs the request Infer runs, stores it under the caller's id, and
    keeps every check of the stream: header, server-owned plan bound to its device, entry tensors, whole
    payloads."""
    from splitinfer.codecs import decode_tensor, encode_tensor
    from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc

    plan = _server_plan(system, "phone-once")  # the checks below send "x"
    tensor = encode_tensor(system["x"], "x")
    device = plan_pb2.DeviceState(device_id="phone-once")
    with grpc.insecure_channel(system["frontend"].address) as channel:
        stub = frontend_pb2_grpc.FrontEndServiceStub(channel)

        def once(header: frontend_pb2.InferHeader, *tensors: object) -> frontend_pb2.InferOnceResponse:
            return stub.InferOnce(frontend_pb2.InferOnceRequest(header=header, tensors=tensors), timeout=30)

        def code(header: frontend_pb2.InferHeader | None, *tensors: object) -> grpc.StatusCode:
            try:
                stub.InferOnce(frontend_pb2.InferOnceRequest(header=header, tensors=tensors), timeout=30)
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[attr-defined, no-any-return]
            return grpc.StatusCode.OK

        header = frontend_pb2.InferHeader(request_id="once-1", device=device, plan_id=plan.plan_id)
        answer = once(header, tensor)
        streamed_header = frontend_pb2.InferHeader(request_id="once-2", device=device, plan_id=plan.plan_id)
        messages = [frontend_pb2.InferRequest(header=streamed_header), frontend_pb2.InferRequest(tensor=tensor)]
        streamed = [r.tensor for r in stub.Infer(iter(messages), timeout=30) if r.WhichOneof("kind") == "tensor"]
        assert sorted(t.name for t in answer.tensors) == sorted(t.name for t in streamed)
        assert {t.name: t.payload for t in answer.tensors} == {t.name: t.payload for t in streamed}
        assert answer.trace.server_ms > 0 and answer.trace.steps
        classify, _ = _expected(system)
        linear = next(t for t in answer.tensors if t.name == "linear")
        assert torch.allclose(decode_tensor(linear), classify, atol=1e-4)
        # A retry with the same id is the stored result; other inputs under it are refused.
        assert {t.name: t.payload for t in once(header, tensor).tensors} == {t.name: t.payload for t in answer.tensors}
        other = encode_tensor(system["x"] + 1, "x")
        assert code(header, other) == grpc.StatusCode.FAILED_PRECONDITION
        stored = result_store_pb2_grpc.ResultStoreServiceStub(channel).GetResult(
            result_store_pb2.GetResultRequest(request_id="once-1", caller="phone-once"), timeout=10
        )
        assert {t.name for t in stored.result.outputs} == {t.name for t in answer.tensors}
        # The stream's refusals, in one message.
        assert code(None, tensor) == grpc.StatusCode.INVALID_ARGUMENT  # no header
        truncated = frontend_pb2.InferRequest(tensor=tensor).tensor
        truncated.payload = truncated.payload[:10]
        fresh = frontend_pb2.InferHeader(request_id="once-3", device=device, plan_id=plan.plan_id)
        assert code(fresh, truncated) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(fresh, encode_tensor(system["x"], "not_an_entry")) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(fresh, tensor, tensor) == grpc.StatusCode.INVALID_ARGUMENT  # the same tensor twice
        unknown = frontend_pb2.InferHeader(request_id="once-4", device=device, plan_id="not-a-plan-of-this-front-end")
        assert code(unknown, tensor) == grpc.StatusCode.FAILED_PRECONDITION
        someone_else = frontend_pb2.InferHeader(
            request_id="once-5", device=plan_pb2.DeviceState(device_id="another-phone"), plan_id=plan.plan_id
        )
        assert code(someone_else, tensor) == grpc.StatusCode.FAILED_PRECONDITION  # a plan is bound to its device


def test_front_end_cut_off_means_device_only_fallback(system: dict) -> None:  # type: ignore[type-arg]
    agent = _agent(system)
    first = agent.infer("two_heads", {"x": system["x"]})  # plans, and prefetches the fallback variant
    assert not first.device_only_fallback
    system["frontend"].stop(0.5)
    result = agent.infer("two_heads", {"x": system["x"]})
    assert result.device_only_fallback and "unreachable" in result.reason
    classify, segment = _expected(system)
    assert torch.allclose(result.outputs["linear"], classify, atol=1e-4)
    assert torch.allclose(result.outputs["conv2d_3"], segment, atol=1e-4)
    agent.close()
