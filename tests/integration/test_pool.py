"""Model Pool over real gRPC: list, fetch with sha256 verification, put, tampered artifacts refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from edge_agent.client import NodeClient
from server_node.process import spawn_node
from splitinfer.divider import ServerCapacity, divide
from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.frontend.serving import ServingLoop
from splitinfer.graph import ModelGraph
from splitinfer.pool import BlobStore, ModelPool
from splitinfer.pool.service import ModelPoolServicer, PoolClient
from splitinfer.program import export_program
from splitinfer.runtime import PartitionKey
from splitinfer.transport.aio_server import new_aio_server
from splitinfer.v1 import model_pool_pb2_grpc
from splitinfer.zoo import build


@pytest.fixture
def pool_server(tmp_path: Path) -> Iterator[tuple[ModelPool, str, str]]:
    pool = ModelPool(tmp_path / "pool")
    model, example = build("tiny_cnn")
    graph = ModelGraph.build(export_program(model, example), example)
    division = divide(graph, "tiny_cnn", [ServerCapacity("a", 1e9, 1 << 20), ServerCapacity("b", 1e9, 1 << 20)])
    sha = pool.add_division(division, variant="fp32", division_name="two", task="classification", accuracy=0.9)
    serving = ServingLoop("pool", 4)

    async def serve() -> int:
        server, _ = new_aio_server()
        model_pool_pb2_grpc.add_ModelPoolServiceServicer_to_server(ModelPoolServicer(pool), server)
        port = server.add_insecure_port("127.0.0.1:0")
        serving.server = server
        await server.start()
        return port

    port = serving.run(serve())
    try:
        yield pool, f"127.0.0.1:{port}", sha
    finally:
        serving.stop(1)


def test_list_and_fetch_verified(pool_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pool, address, sha = pool_server
    client = PoolClient(address)
    models = client.list_models()
    assert [m.name for m in models] == ["tiny_cnn"]
    variant = models[0].variants[0]
    assert variant.name == "fp32" and variant.division_manifests["two"] == sha and not variant.accuracy_measured
    local = BlobStore(tmp_path / "device")
    path = client.fetch(sha, local)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    for part in pool.manifest(sha)["partitions"]:
        for file_sha in part["files"].values():
            client.fetch(file_sha, local)
            assert local.has(file_sha)
    client.close()


def test_tampered_artifact_is_refused(pool_server) -> None:  # type: ignore[no-untyped-def]
    pool, address, sha = pool_server
    weights = pool.manifest(sha)["partitions"][0]["files"]["weights.safetensors"]
    path = pool.store.path(weights)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    client = PoolClient(address)
    with pytest.raises(FailedPrecondition, match="corrupt"):
        client.fetch(weights, BlobStore(path.parent.parent.parent / "other"))
    with pytest.raises(FailedPrecondition):
        pool.export_partition(sha, "p0", path.parent.parent.parent / "out")
    client.close()


def test_put_verifies_declared_sha(pool_server) -> None:  # type: ignore[no-untyped-def]
    pool, address, _ = pool_server
    client = PoolClient(address)
    response = client.put(b"x" * (3 << 20))
    assert pool.store.has(response.sha256) and not response.already_present
    assert client.put(b"x" * (3 << 20)).already_present
    from splitinfer.v1 import model_pool_pb2

    stub = model_pool_pb2_grpc.ModelPoolServiceStub(grpc.insecure_channel(address))
    lie = model_pool_pb2.PutArtifactRequest(sha256="0" * 64, size_bytes=3, data=b"abc")
    with pytest.raises(grpc.RpcError) as info:
        stub.PutArtifact(iter([lie]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(NotFound):
        client.fetch("a" * 64, BlobStore(pool.root / "x"))
    with pytest.raises(InvalidArgument):
        client.fetch("not-a-sha", BlobStore(pool.root / "y"))
    client.close()


def test_partitions_from_the_pool_run_on_a_node(pool_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Pool -> partition artifacts -> a real node process hosting both; chained on one node, same answer."""
    pool, _, sha = pool_server
    manifest = pool.manifest(sha)
    node = spawn_node()
    try:
        from edge_agent.client import partition_ref
        from splitinfer.codecs import CodecSpec, decode_tensor, encode_tensor
        from splitinfer.v1 import model_server_pb2, route_pb2

        with NodeClient(node.address) as client:
            steps = []
            names = [p["name"] for p in manifest["partitions"]]
            for _index, part in enumerate(manifest["partitions"]):
                key = PartitionKey("tiny_cnn", "fp32", part["name"])
                part_sha = pool.export_partition(sha, part["name"], tmp_path / part["name"])
                client.load_partition(str(tmp_path / part["name"]), key, part_sha)
                outputs = []
                for value, successors in part["successors"].items():
                    consumers = [names.index(s) for s in successors]
                    outputs.append(
                        route_pb2.TensorRoute(
                            tensor_name=value,
                            consumer_steps=consumers,
                            deliver=not consumers,
                            encoding=CodecSpec.parse("lz4").to_proto(),
                        )
                    )
                steps.append(
                    route_pb2.RouteStep(partition=partition_ref(key), addresses=[node.address], outputs=outputs)
                )
            model, example = build("tiny_cnn")
            header = model_server_pb2.RequestHeader(request_id="pool-1", route=route_pb2.Route(steps=steps))
            out, timings = client.process(header, [encode_tensor(example[0], "input")])
            assert len(timings) == len(steps)
            assert torch.allclose(decode_tensor(out["linear"]), model(example[0]).detach(), atol=1e-5)
    finally:
        node.stop()


def test_node_pulls_only_its_partition_from_the_pool(pool_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pool, address, sha = pool_server
    manifest = pool.manifest(sha)
    cache = tmp_path / "node-cache"
    config = tmp_path / "node.json"
    config.write_text(f'{{"cache_dir": "{cache}"}}')
    node = spawn_node(["--config", str(config)])
    try:
        with NodeClient(node.address) as client:
            key = PartitionKey("tiny_cnn", "fp32", "p1")
            client.load_partition(f"pool://{address}/{sha}/p1", key)
            assert any(p.partition.partition == "p1" for p in client.status().partitions)
            with pytest.raises(NotFound):
                client.load_partition(f"pool://{address}/{sha}/p7", PartitionKey("tiny_cnn", "fp32", "p7"))
            with pytest.raises(InvalidArgument):
                client.load_partition("pool://nonsense", key)
        stored = {p.name for p in (cache / "blobs").rglob("*") if p.is_file()}
        wanted = set(next(p for p in manifest["partitions"] if p["name"] == "p1")["files"].values()) | {sha}
        assert stored == wanted  # the other partition's files were never fetched
    finally:
        node.stop()


def test_divide_with_live_capacities_from_nodes(tmp_path: Path) -> None:
    import subprocess
    import sys

    nodes = [spawn_node(), spawn_node()]
    try:
        addresses = ",".join(n.address for n in nodes)
        result = subprocess.run(
            [sys.executable, "-m", "splitinfer.cli", "divide", "splitinfer.zoo:residual_cnn", "--pool",
             str(tmp_path / "pool"), "--nodes", addresses],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert any(n.address in result.stdout for n in nodes)  # partitions sized to, and named by, live nodes
    finally:
        for n in nodes:
            n.stop()
