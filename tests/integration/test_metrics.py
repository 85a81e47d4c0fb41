"""Every server node exposes Prometheus metrics: requests, errors by code, compute time, bytes by codec."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

from server_node.config import NodeConfig
from server_node.server import start_node
from splitinfer.codecs import CodecSpec, encode_tensor
from splitinfer.errors import InvalidArgument
from splitinfer.program import export_program
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.transport.clients import NodeClient, partition_ref
from splitinfer.v1 import model_server_pb2, route_pb2


def test_node_metrics_count_requests_errors_compute_and_bytes(tmp_path: Path) -> None:
    class Double(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return torch.relu(t) * 2

    x = torch.randn(64, 64)
    key = PartitionKey("double", "fp32", "p0")
    save_partition_artifact(export_program(Double(), (x,)), key, tmp_path / "p0")
    node = start_node(NodeConfig(metrics_port=0, benchmark_s=0))
    try:
        assert node.metrics_port
        with NodeClient(node.address) as client:
            client.load_partition(str(tmp_path / "p0"), key)
            route = route_pb2.Route(steps=[route_pb2.RouteStep(partition=partition_ref(key))])
            for _ in range(3):
                header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
                client.process(header, [encode_tensor(x, "t", CodecSpec.parse("lz4"))])
            with pytest.raises(InvalidArgument):
                header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=route)
                client.process(header, [encode_tensor(x[:2], "t")])
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        node.stop(0)
    assert 'splitinfer_requests_total{rpc="ProcessOnce"} 4.0' in text
    assert 'splitinfer_request_errors_total{code="INVALID_ARGUMENT"} 1.0' in text
    assert 'splitinfer_partition_compute_seconds_count{partition="double@fp32/p0"} 3.0' in text
    assert 'splitinfer_tensor_bytes_total{codec="lz4",direction="in"}' in text
    assert 'splitinfer_tensor_bytes_total{codec="none",direction="out"}' in text
    assert "splitinfer_in_flight 0.0" in text
