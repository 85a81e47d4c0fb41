"""Detection end to end: the zoo's detector, trained on the synthetic set, divided with its post-processing
stage declared; its head runs on the device (the edge agent), the rest on two server nodes; the front-end
runs decode + NMS after the chain returns, answers with boxes, and stores them as detection records that
ResultStoreService.QueryDetections finds by label, score and time window, page by page."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from server_node.config import NodeConfig
from server_node.server import RunningNode, start_node
from splitinfer.detection import CLASSES, decode_nms, synthetic_detection_set, train_detector
from splitinfer.detection.postprocess import box_iou
from splitinfer.divider import ServerCapacity, divide
from splitinfer.frontend.server import FrontEndConfig, RunningFrontEnd, start_frontend
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.registry import EmbeddedRegistry
from splitinfer.runtime import PartitionKey
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import plan_pb2, result_store_pb2, result_store_pb2_grpc
from splitinfer.zoo.detector import TinyDetector, detector

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("detection")
    model, example = detector()
    assert isinstance(model, TinyDetector)
    train_detector(model, synthetic_detection_set(384, seed=11), steps=150)
    program = export_program(model, example)
    graph = ModelGraph.build(program, example)
    servers = [ServerCapacity("edge", 1e10, 10**9), ServerCapacity("cloud", 1e10, 10**9)]
    head = next(i for i, n in enumerate(graph.nodes) if n.name == "relu_1") + 1  # after the stem: 16 KB
    division = replace(divide(graph, "detector", servers, start=head), postprocess=model.postprocess)
    assert [p.host for p in division.partitions] == ["device", "edge", "cloud"]
    pool = ModelPool(root / "pool")
    sha = pool.add_division(division, variant="fp32", division_name="default", task="detection", accuracy=0.5)
    assert pool.division(sha).postprocess == model.postprocess
    registry = EmbeddedRegistry()
    nodes: list[RunningNode] = []
    frontend: RunningFrontEnd | None = None
    try:
        for part in ("p1", "p2"):  # p0 lives on no server: the device must run it
            node = start_node(NodeConfig(torch_threads=1, benchmark_s=0.05, status_interval_s=0.2), registry=registry)
            nodes.append(node)
            target = root / "export" / part
            part_sha = pool.export_partition(sha, part, target)
            with NodeClient(node.address) as client:
                client.load_partition(str(target), PartitionKey("detector", "fp32", part), part_sha)
            node.publish()
        deadline = time.monotonic() + 15
        while not (registry.replicas("detector@fp32/p1") and registry.replicas("detector@fp32/p2")):
            assert time.monotonic() < deadline, "nodes did not join the registry"
            time.sleep(0.05)
        frontend = start_frontend(
            FrontEndConfig(pool_dir=str(pool.root), results_db=str(root / "results.db")), registry=registry
        )
        yield {"model": model, "frontend": frontend, "nodes": nodes, "root": root}
    finally:
        if frontend is not None:
            frontend.stop(0.5)
        for node in nodes:
            node.stop(0.5)


def test_detections_are_served_split_stored_and_queried(system: dict[str, object]) -> None:
    frontend = system["frontend"]
    assert isinstance(frontend, RunningFrontEnd)
    model = system["model"]
    assert isinstance(model, TinyDetector)
    agent = EdgeAgent(
        AgentConfig(
            device_id="cam-1", frontend=frontend.address, pool=frontend.address,
            cache_dir=str(Path(str(system["root"])) / "agent"), emulated_uplink_mbps=50.0, plan_ttl_s=60.0,
        ),
        compute_flops=2e7,  # a slow camera: the servers are worth it, but only the nodes host p1 and p2
    )  # fmt: skip
    images = synthetic_detection_set(4, seed=99)
    found_labels: set[str] = set()
    start_ms = int(time.time() * 1000)
    try:
        for i in range(len(images)):
            exact = plan_pb2.Requirements(min_accuracy=0.5)  # the variant's own accuracy: no lossy codec
            result = agent.infer("detector", {"image": images.images[i : i + 1]}, exact, request_id=f"frame-{i}")
            assert not result.device_only_fallback and result.plan is not None
            assert [p.partition for p in result.plan.placements if p.on_device] == ["p0"]
            assert set(result.outputs) == {"boxes", "scores", "labels"}
            # The front-end ran the same decode + NMS as running the whole model here does.
            with torch.no_grad():
                whole = model(images.images[i : i + 1])
            boxes, scores, labels = decode_nms(whole["class_logits"], whole["box_deltas"], model.postprocess.params)[0]
            assert torch.equal(result.outputs["labels"], labels)
            assert torch.allclose(result.outputs["boxes"], boxes, atol=1e-3)
            assert torch.allclose(result.outputs["scores"], scores, atol=1e-4)
            if len(labels):
                best = box_iou(result.outputs["boxes"], images.boxes[i]).max(dim=1).values
                assert float(best.max()) > 0.3  # trained for a few seconds, it finds the objects drawn
            found_labels |= {CLASSES[int(label)] for label in labels}
    finally:
        agent.close()
    assert found_labels, "the trained detector found nothing in four images"

    with grpc.insecure_channel(frontend.address) as channel:
        store = result_store_pb2_grpc.ResultStoreServiceStub(channel)
        stored = store.GetResult(result_store_pb2.GetResultRequest(request_id="frame-0", caller="cam-1"), timeout=10)
        assert {t.name for t in stored.result.outputs} == {"boxes", "scores", "labels"}
        everything = store.QueryDetections(result_store_pb2.QueryDetectionsRequest(page_size=1000), timeout=10)
        assert len(everything.detections) == sum(len(r.detections) for r in _results(store))
        assert {r.device_id for r in everything.detections} == {"cam-1"}
        assert all(r.model == "detector" and r.variant == "fp32" for r in everything.detections)
        label = sorted(found_labels)[0]
        by_label = store.QueryDetections(result_store_pb2.QueryDetectionsRequest(label=label), timeout=10)
        assert by_label.detections and {r.detection.label for r in by_label.detections} == {label}
        threshold = 0.6
        confident = store.QueryDetections(result_store_pb2.QueryDetectionsRequest(min_score=threshold), timeout=10)
        assert all(r.detection.score >= threshold for r in confident.detections)
        assert len(confident.detections) == sum(r.detection.score >= threshold for r in everything.detections)
        later = store.QueryDetections(
            result_store_pb2.QueryDetectionsRequest(since_unix_ms=int(time.time() * 1000) + 60_000), timeout=10
        )
        assert not later.detections
        window = store.QueryDetections(
            result_store_pb2.QueryDetectionsRequest(since_unix_ms=start_ms - 1000, page_size=1), timeout=10
        )
        assert len(window.detections) == 1 and (window.next_page_token or len(everything.detections) == 1)
        with pytest.raises(grpc.RpcError) as refused:
            store.QueryDetections(result_store_pb2.QueryDetectionsRequest(page_token="forged"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _results(store: result_store_pb2_grpc.ResultStoreServiceStub) -> list[result_store_pb2.StoredResult]:
    return list(store.QueryResults(result_store_pb2.QueryResultsRequest(model="detector"), timeout=10).results)
