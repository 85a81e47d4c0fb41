"""Nodes on onnxruntime: real node processes load pool partitions with their ONNX twins, run them on ORT
(or the interpreter when configured or when a partition has no twin), refuse a provider they lack, and batch
concurrent requests into one run (asserted from the node's own statistics), each caller getting its rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from edge_agent.client import NodeClient, RouteClient
from server_node.process import NodeProcess, spawn_node
from splitinfer.codecs import decode_tensor, encode_tensor
from splitinfer.divider import partition_at
from splitinfer.errors import FailedPrecondition
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.routing import build_route
from splitinfer.runtime import PartitionKey
from splitinfer.variants import make_variant
from splitinfer.zoo import build

pytestmark = pytest.mark.integration


def _node(tmp: Path, name: str, **config: object) -> NodeProcess:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"intra_op_threads": 1, "benchmark_s": 0, **config}))
    return spawn_node(["--config", str(path), "--torch-threads", "1"])


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("ort-pool")
    store = ModelPool(root / "pool")
    model, example = build("tiny_cnn")
    shas = {}
    for kind in ("fp32", "bf16"):
        program = make_variant(model, example, kind)
        graph = ModelGraph.build(program, example)
        division = partition_at(graph, "tiny_cnn", [len(graph.nodes) // 2])
        shas[kind] = store.add_division(division, variant=kind, division_name="default")
    yield {"root": root, "pool": store, "shas": shas, "model": model, "x": example[0]}


def _load(node: NodeProcess, info: dict[str, object], kind: str) -> list[str]:
    store: ModelPool = info["pool"]  # type: ignore[assignment]
    sha = info["shas"][kind]  # type: ignore[index]
    runtimes = []
    for entry in store.division(sha).partitions:
        dest = info["root"] / "exports" / kind / entry.name  # type: ignore[operator]
        part_sha = store.export_partition(sha, entry.name, dest)
        with NodeClient(node.address) as client:
            response = client.load_partition(str(dest), PartitionKey("tiny_cnn", kind, entry.name), part_sha)
        runtimes.append(response.hosted.runtime)
    return runtimes


def _route(node: NodeProcess, info: dict[str, object], kind: str):  # type: ignore[no-untyped-def]
    store: ModelPool = info["pool"]  # type: ignore[assignment]
    manifest = store.division(info["shas"][kind])  # type: ignore[index]
    model, example = build("tiny_cnn")
    graph = ModelGraph.build(make_variant(model, example, kind), example)
    division = partition_at(graph, "tiny_cnn", [len(graph.nodes) // 2])
    addresses = {p.name: [node.address] for p in manifest.partitions}
    return build_route("tiny_cnn", kind, division.partitions, addresses)


def test_node_runs_onnx_partitions_and_falls_back_for_those_without(pool: dict[str, object], tmp_path: Path) -> None:
    node = _node(tmp_path, "ort")
    try:
        assert _load(node, pool, "fp32") == ["onnxruntime", "onnxruntime"]
        assert _load(node, pool, "bf16") == ["interpreter", "interpreter"]  # no bf16 kernels in ORT's CPU EP
        client = RouteClient()
        x: torch.Tensor = pool["x"]  # type: ignore[assignment]
        with torch.no_grad():
            expected = pool["model"](x)  # type: ignore[operator]
        for kind, tol in (("fp32", 1e-4), ("bf16", 5e-2)):
            outputs, _ = client.run(_route(node, pool, kind), {"input": encode_tensor(x, "input")})
            (out,) = outputs.values()
            torch.testing.assert_close(decode_tensor(out), expected, rtol=tol, atol=tol)
        client.close()
        with NodeClient(node.address) as admin:
            hosted = {h.partition.variant: h for h in admin.status().partitions}
        assert hosted["fp32"].runtime == "onnxruntime" and not hosted["fp32"].fallback_reason
        assert hosted["bf16"].runtime == "interpreter" and "failed" in hosted["bf16"].fallback_reason
    finally:
        node.stop()


def test_interpreter_node_and_a_missing_provider(pool: dict[str, object], tmp_path: Path) -> None:
    node = _node(tmp_path, "interp", runtime="interpreter")
    try:
        assert _load(node, pool, "fp32") == ["interpreter", "interpreter"]
    finally:
        node.stop()
    node = _node(tmp_path, "cuda", execution_providers="cuda,cpu")
    try:
        with pytest.raises(FailedPrecondition, match="cuda"):
            _load(node, pool, "fp32")
    finally:
        node.stop()


def test_concurrent_requests_are_batched_and_each_caller_gets_its_rows(pool: dict[str, object], tmp_path: Path) -> None:
    node = _node(tmp_path, "batching", max_batch_size=8, max_queue_delay_ms=1500)
    try:
        _load(node, pool, "fp32")
        route = _route(node, pool, "fp32")
        inputs = [torch.randn(1, 3, 32, 32) for _ in range(6)]
        client = RouteClient()
        with ThreadPoolExecutor(len(inputs)) as threads:
            results = list(
                threads.map(lambda x: client.run(route, {"input": encode_tensor(x, "input")}, timeout_s=60), inputs)
            )
        client.close()
        with torch.no_grad():
            for x, (outputs, _) in zip(inputs, results, strict=True):
                (out,) = outputs.values()
                torch.testing.assert_close(decode_tensor(out), pool["model"](x), rtol=1e-4, atol=1e-4)  # type: ignore[operator]
        with NodeClient(node.address) as admin:
            status = {h.partition.partition: h for h in admin.status().partitions}
        for part in ("p0", "p1"):
            hosted = status[part]
            assert hosted.batched_requests == 6 and hosted.completed == 6
            # The six requests arrived within the 1.5 s window: far fewer runs than requests.
            assert hosted.batches <= 2 and hosted.largest_batch_requests >= 3, hosted
    finally:
        node.stop()


def test_node_loads_pool_partitions_straight_from_verified_blobs(pool: dict[str, object], tmp_path: Path) -> None:
    from splitinfer.frontend.serving import ServingLoop
    from splitinfer.pool.service import ModelPoolServicer
    from splitinfer.transport.aio_server import new_aio_server
    from splitinfer.v1 import model_pool_pb2_grpc

    store: ModelPool = pool["pool"]  # type: ignore[assignment]
    sha: str = pool["shas"]["fp32"]  # type: ignore[index]
    serving = ServingLoop("pool", 2)

    async def serve() -> int:
        server, _ = new_aio_server()
        model_pool_pb2_grpc.add_ModelPoolServiceServicer_to_server(ModelPoolServicer(store), server)
        port = server.add_insecure_port("127.0.0.1:0")
        serving.server = server
        await server.start()
        return port

    address = f"127.0.0.1:{serving.run(serve())}"
    cache = tmp_path / "cache"
    node = _node(tmp_path, "pooled", cache_dir=str(cache))
    try:
        with NodeClient(node.address) as client:
            key = PartitionKey("tiny_cnn", "fp32", "p1")
            with pytest.raises(FailedPrecondition, match="has manifest"):
                client.load_partition(f"pool://{address}/{sha}/p1", key, "0" * 64)
            response = client.load_partition(f"pool://{address}/{sha}/p1", key, store.partition_manifest_sha(sha, "p1"))
            assert response.hosted.runtime == "onnxruntime"
        assert not (cache / "partitions").exists()  # no artifact directory was written
        entry = store.division(sha).partition("p1")
        stored = {p.name for p in (cache / "blobs").rglob("*") if p.is_file()}
        assert stored == {*entry.files.values(), sha}
    finally:
        node.stop()
        serving.stop(1)
