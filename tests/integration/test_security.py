"""A TLS / mutual-TLS cluster end to end, and refusals of unauthenticated and wrong-role calls.

Real processes: etcd, two server nodes serving mutual TLS, and the front-end serving TLS with device tokens,
all with certificates from ``make certs`` (splitinfer.security.certs). An operator loads partitions with the
admin certificate; a device agent with its token runs a split request and gets the whole model's answer.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
import torch

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from server_node.process import NodeProcess, spawn_node
from splitinfer.divider import partition_at
from splitinfer.errors import Unavailable
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.pool import ModelPool
from splitinfer.pool.service import PoolClient
from splitinfer.program import export_program
from splitinfer.registry import EtcdRegistry
from splitinfer.registry.etcd_server import start_etcd
from splitinfer.runtime import PartitionKey
from splitinfer.security import ClientSecurity, client_security_from_dir
from splitinfer.security.certs import make_certs
from splitinfer.transport.channel import open_channel
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, plan_pb2, result_store_pb2, result_store_pb2_grpc
from splitinfer.zoo import build

MODEL = "tiny_cnn"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("secure")
    certs = root / "certs"
    make_certs(certs)
    etcd = start_etcd(root / "etcd")
    model, example = build(MODEL)
    program = export_program(model, example)
    graph = ModelGraph.build(program, example)
    cuts = [c.position for c in narrow_cuts(graph)][1:-1]
    pool = ModelPool(root / "pool")
    sha = pool.add_division(partition_at(graph, MODEL, cuts[:2]), variant="fp32", division_name="default")
    admin = client_security_from_dir(certs, "admin")
    nodes: list[NodeProcess] = []
    frontend = None
    try:
        for _ in range(2):
            nodes.append(
                spawn_node(["--registry", f"etcd://{etcd.endpoint}", "--torch-threads", "1", "--tls-dir", str(certs)],
                           log_dir=root, security=admin)
            )  # fmt: skip
        port_file = root / "frontend.port"
        log = (root / "frontend.log").open("wb")
        frontend = subprocess.Popen(
            [sys.executable, "-m", "splitinfer.frontend", "--pool-dir", str(pool.root), "--results-db",
             str(root / "results.db"), "--registry", f"etcd://{etcd.endpoint}", "--tls-dir", str(certs),
             "--port-file", str(port_file)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert frontend.poll() is None and time.monotonic() < deadline, (root / "frontend.log").read_text()
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text()}"
        # The operator loads partitions with the admin certificate; nodes pull them from the front-end's pool
        # over TLS with the cluster certificate and token.
        for part in pool.manifest(sha)["partitions"]:
            for node in nodes:
                with NodeClient(node.address, security=admin) as client:
                    client.load_partition(
                        f"pool://{address}/{sha}/{part['name']}", PartitionKey(MODEL, "fp32", part["name"])
                    )
        registry = EtcdRegistry(etcd.endpoint)
        while any(len(registry.replicas(f"{MODEL}@fp32/{p['name']}")) < 2 for p in pool.manifest(sha)["partitions"]):
            assert time.monotonic() < deadline, "nodes did not publish their partitions"
            time.sleep(0.1)
        registry.close()
        yield {"root": root, "certs": certs, "address": address, "nodes": nodes, "model": model, "x": example[0],
               "sha": sha, "input": program.input_names[0]}  # fmt: skip
    finally:
        if frontend is not None:
            frontend.terminate()
            frontend.wait(timeout=20)
        for node in nodes:
            node.stop()
        etcd.cleanup()


def test_device_with_a_token_runs_a_split_request_over_tls(secure: dict) -> None:  # type: ignore[type-arg]
    agent = EdgeAgent(
        AgentConfig(
            device_id="phone-tls", frontend=secure["address"], pool=secure["address"],
            cache_dir=str(secure["root"] / "agent"), emulated_battery=True, emulated_uplink_mbps=50.0,
            tls_ca_file=str(secure["certs"] / "ca.pem"), token_file=str(secure["certs"] / "device.token"),
        ),
        compute_flops=5e7,
    )  # fmt: skip
    result = agent.infer(MODEL, {secure["input"]: secure["x"]})
    assert not result.device_only_fallback, result.reason
    assert result.plan is not None and result.plan.route is None and result.plan_id  # the front-end keeps routes
    with torch.no_grad():
        expected = secure["model"](secure["x"])
    [output] = result.outputs.values()
    torch.testing.assert_close(output, expected, rtol=1e-3, atol=1e-3)
    # The device reads its stored result back with the same token.
    device = ClientSecurity((secure["certs"] / "ca.pem").read_bytes(), token=_token(secure, "device"))
    with open_channel(secure["address"], security=device) as channel:
        stored = result_store_pb2_grpc.ResultStoreServiceStub(channel).GetResult(
            result_store_pb2.GetResultRequest(request_id=result.request_id), timeout=10
        )
    assert stored.result.device_id == "phone-tls"


def _token(secure: dict, name: str) -> str:  # type: ignore[type-arg]
    return (secure["certs"] / f"{name}.token").read_text().strip()


def _plan(secure: dict, security: ClientSecurity | None) -> None:  # type: ignore[type-arg]
    with open_channel(secure["address"], security=security) as channel:
        frontend_pb2_grpc.FrontEndServiceStub(channel).Plan(
            frontend_pb2.PlanRequest(
                model=MODEL, device=plan_pb2.DeviceState(compute_flops=1e9, uplink_mbps=10, device_id="d")
            ),
            timeout=10,
        )


def test_unauthenticated_and_wrong_role_calls_are_refused_and_logged(secure: dict) -> None:  # type: ignore[type-arg]
    ca = (secure["certs"] / "ca.pem").read_bytes()
    _plan(secure, ClientSecurity(ca, token=_token(secure, "device")))  # the right credential works
    for security, code in (
        (ClientSecurity(ca), grpc.StatusCode.UNAUTHENTICATED),  # TLS, but no token
        (ClientSecurity(ca, token="not-a-token"), grpc.StatusCode.UNAUTHENTICATED),
        (ClientSecurity(ca, token=_token(secure, "cluster")), grpc.StatusCode.PERMISSION_DENIED),  # not a device
    ):
        with pytest.raises(grpc.RpcError) as info:
            _plan(secure, security)
        assert info.value.code() == code, info.value.details()
    # Plaintext to a TLS port does not even connect.
    with pytest.raises(grpc.RpcError) as info, grpc.insecure_channel(secure["address"]) as channel:
        frontend_pb2_grpc.FrontEndServiceStub(channel).Plan(frontend_pb2.PlanRequest(model=MODEL), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    # Putting into the pool needs the admin role: a device is refused, the admin token is not.
    device = ClientSecurity(ca, token=_token(secure, "device"))
    with (
        PoolClient(secure["address"], security=device) as pool,
        pytest.raises(Exception, match=r"may not call") as refused,
    ):
        pool.put(b"weights")
    assert "PutArtifact" in str(refused.value)
    with PoolClient(secure["address"], security=ClientSecurity(ca, token=_token(secure, "admin"))) as pool:
        assert pool.put(b"weights").sha256

    # Nodes demand a client certificate; with the cluster one, loading partitions is still an admin's job.
    node = secure["nodes"][0]
    cluster = client_security_from_dir(secure["certs"], "cluster")
    with NodeClient(node.address, security=cluster) as client:
        assert client.status().partitions  # the cluster role may read status
        with pytest.raises(Exception, match=r"may not call"):
            client.load_partition(f"pool://{secure['address']}/{secure['sha']}/p0", PartitionKey(MODEL, "fp32", "p0"))
    with NodeClient(node.address, security=device) as client, pytest.raises(Unavailable):
        client.status(timeout_s=5)

    log = (secure["root"] / "frontend.log").read_text()
    assert "refused /splitinfer.v1.FrontEndService/Plan" in log and "unauthenticated" in log
    assert "permission denied" in log and "PutArtifact" in log
    assert "refused /splitinfer.v1.ModelServerService/LoadPartition" in node.log_path.read_text()


def test_plans_and_results_belong_to_the_token_that_made_them(secure: dict) -> None:  # type: ignore[type-arg]
    from splitinfer.errors import FailedPrecondition
    from splitinfer.frontend.client import FrontEndClient

    ca = (secure["certs"] / "ca.pem").read_bytes()
    device = ClientSecurity(ca, token=_token(secure, "device"))
    admin = ClientSecurity(ca, token=_token(secure, "admin"))
    state = plan_pb2.DeviceState(device_id="phone-tok", compute_flops=0, uplink_mbps=1000, rtt_ms=1)
    x = secure["x"]
    with FrontEndClient(secure["address"], security=device) as client:
        plan = client.plan(MODEL, state)
        mine, _ = client.infer(plan, state, {secure["input"]: x}, request_id="tok-1")
    with FrontEndClient(secure["address"], security=admin) as other:
        # Another identity cannot use the device's plan id, even claiming the same device id.
        with pytest.raises(FailedPrecondition, match="new plan"):
            other.infer(plan, state, {secure["input"]: x}, request_id="tok-2")
        # Its own request under the same request id is another request, with its own answer.
        theirs, _ = other.infer(other.plan(MODEL, state), state, {secure["input"]: x * 2}, request_id="tok-1")
    [a], [b] = mine.values(), theirs.values()
    assert not torch.allclose(a, b)
    # The device reads only its own results, whatever caller it names.
    with open_channel(secure["address"], security=device) as channel:
        store = result_store_pb2_grpc.ResultStoreServiceStub(channel)
        asked = store.GetResult(result_store_pb2.GetResultRequest(request_id="tok-1", caller="dev-admin"), timeout=10)
        assert asked.result.caller == "dev-device"
        listed = store.QueryResults(result_store_pb2.QueryResultsRequest(caller="dev-admin"), timeout=10)
        assert listed.results and {r.caller for r in listed.results} == {"dev-device"}
    with open_channel(secure["address"], security=admin) as channel:  # an operator may look at anyone's
        store = result_store_pb2_grpc.ResultStoreServiceStub(channel)
        asked = store.GetResult(result_store_pb2.GetResultRequest(request_id="tok-1", caller="dev-admin"), timeout=10)
        assert asked.result.caller == "dev-admin"
        for caller in ("dev-device", "dev-admin"):  # a box for each caller, as a detector's results carry
            box = result_store_pb2.Detection(x_min=1, y_min=1, x_max=9, y_max=9, label="circle", label_id=1, score=0.9)
            result = result_store_pb2.StoredResult(request_id=f"det-{caller}", caller=caller, detections=[box])
            store.PutResult(result_store_pb2.PutResultRequest(result=result), timeout=10)
        everyone = store.QueryDetections(result_store_pb2.QueryDetectionsRequest(label="circle"), timeout=10)
        assert {r.caller for r in everyone.detections} == {"dev-device", "dev-admin"}
    with open_channel(secure["address"], security=device) as channel:  # the device sees its own boxes only
        store = result_store_pb2_grpc.ResultStoreServiceStub(channel)
        request = result_store_pb2.QueryDetectionsRequest(label="circle", caller="dev-admin")
        found = store.QueryDetections(request, timeout=10)
        assert found.detections and {r.caller for r in found.detections} == {"dev-device"}
