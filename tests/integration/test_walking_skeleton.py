"""The walking skeleton with a real server node process: head here, tail there, same answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_agent.client import NodeClient, SplitRunner, partition_ref
from server_node.process import NodeProcess, spawn_node
from splitinfer.codecs import CodecSpec, encode_tensor
from splitinfer.demo import LOSSY_TOLERANCE, hand_split
from splitinfer.errors import InvalidArgument, NotFound
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.v1 import model_server_pb2, model_server_pb2_grpc, route_pb2
from splitinfer.zoo import build

KEY = PartitionKey("tiny_cnn", "fp32", "tail")


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NodeProcess, object, object, Path, str]]:
    model, example = build("tiny_cnn")
    split = hand_split(model, example)
    artifact = tmp_path_factory.mktemp("pool") / "tail"
    sha = save_partition_artifact(split.tail, KEY, artifact)
    node = spawn_node(["--torch-threads", "1"])
    try:
        yield node, split, (model, example), artifact, sha
    finally:
        assert node.stop() == 0  # graceful shutdown exits cleanly


@pytest.fixture(scope="module")
def client(setup) -> Iterator[NodeClient]:  # type: ignore[no-untyped-def]
    node, _, _, artifact, sha = setup
    with NodeClient(node.address) as c:
        c.load_partition(str(artifact), KEY, sha)
        yield c


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd", "fp16+lz4", "bf16", "int8+zstd", "int8c+lz4"])
def test_split_output_equals_whole_model(setup, client: NodeClient, codec: str) -> None:  # type: ignore[no-untyped-def]
    _, split, (model, example), _, _ = setup
    runner = SplitRunner(split.head, KEY, split.tail.output_names, client)
    spec = CodecSpec.parse(codec)
    result = runner.infer({split.whole.input_names[0]: example[0]}, spec)
    out = result.outputs[split.tail.output_names[0]]
    expected = model(example[0]).detach()
    if spec.is_lossy:
        assert float((out - expected).abs().max()) <= LOSSY_TOLERANCE * float(expected.abs().max())
    else:
        assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    assert result.bytes_sent > 0 and result.timings and result.timings[0].compute_ms > 0


def test_large_tensor_travels_chunked(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A tensor bigger than one chunk (and than gRPC's default 4 MiB) goes through and comes back exact."""
    node = setup[0]
    program = _identity_program(torch.randn(3, 1024, 1024))
    key = PartitionKey("ident", "fp32", "p0")
    sha = save_partition_artifact(program, key, tmp_path / "ident")
    x = torch.randn(3, 1024, 1024)
    with NodeClient(node.address, chunk_bytes=256 << 10) as c:
        c.load_partition(str(tmp_path / "ident"), key, sha)
        header = _header(key, program.input_names)
        out, _ = c.process(header, [encode_tensor(x, program.input_names[0])])
    from splitinfer.codecs import decode_tensor

    assert torch.allclose(decode_tensor(out[program.output_names[0]]), x * 2)


def _identity_program(x: torch.Tensor):  # type: ignore[no-untyped-def]
    from splitinfer.program import export_program

    class Double(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t * 2

    return export_program(Double(), (x,))


def _header(key: PartitionKey, inputs: list[str]) -> model_server_pb2.RequestHeader:
    return model_server_pb2.RequestHeader(
        request_id=uuid.uuid4().hex,
        route=route_pb2.Route(steps=[route_pb2.RouteStep(partition=partition_ref(key), input_names=inputs)]),
    )


def test_bad_requests_get_clear_codes_and_the_node_keeps_serving(setup, client: NodeClient) -> None:  # type: ignore[no-untyped-def]
    _, split, (_, example), _, _ = setup
    cut = split.tail.input_names[0]
    good = split.head.outputs[0]
    x = torch.randn(good.shape)
    # Unknown partition: NOT_FOUND.
    with pytest.raises(NotFound, match="not hosted"):
        client.process(_header(PartitionKey("nope", "fp32", "p"), [cut]), [encode_tensor(x, cut)])
    # Wrong shape: INVALID_ARGUMENT naming what was expected.
    with pytest.raises(InvalidArgument, match="must be"):
        client.process(_header(KEY, [cut]), [encode_tensor(x[:, :3], cut)])
    # Wrong name: INVALID_ARGUMENT, refused before its payload is buffered.
    with pytest.raises(InvalidArgument, match="does not read a tensor named 'other'"):
        client.process(_header(KEY, [cut]), [encode_tensor(x, "other")])
    # Undecodable tensor: INVALID_ARGUMENT.
    broken = encode_tensor(x, cut, CodecSpec.parse("zstd"))
    broken.payload = b"\x00" * len(broken.payload)
    with pytest.raises(InvalidArgument, match="zstd"):
        client.process(_header(KEY, [cut]), [broken])
    # Malformed route: INVALID_ARGUMENT.
    with pytest.raises(InvalidArgument, match="no steps"):
        client.process(model_server_pb2.RequestHeader(request_id="r"), [])
    # And good requests still succeed.
    runner = SplitRunner(split.head, KEY, split.tail.output_names, client)
    assert runner.infer({split.whole.input_names[0]: example[0]}).outputs


def test_streaming_and_unary_paths_agree(setup, client: NodeClient) -> None:  # type: ignore[no-untyped-def]
    """Small requests go in one ProcessOnce call; the same request streamed through Process gives the same."""
    node, split, _, _, _ = setup
    cut = split.tail.input_names[0]
    x = torch.relu(torch.randn(split.head.outputs[0].shape))
    once, once_timings = client.process(_header(KEY, [cut]), [encode_tensor(x, cut)])
    with NodeClient(node.address, chunk_bytes=1024, once_max_bytes=0) as streaming:
        streamed, stream_timings = streaming.process(_header(KEY, [cut]), [encode_tensor(x, cut)])
    assert once.keys() == streamed.keys() and once_timings and stream_timings
    assert all(once[k].payload == streamed[k].payload for k in once)


def test_process_once_refuses_partial_tensors(setup) -> None:  # type: ignore[no-untyped-def]
    node, split = setup[0], setup[1]
    cut = split.tail.input_names[0]
    tensor = encode_tensor(torch.ones(split.head.outputs[0].shape), cut)  # the right name, dtype and shape
    tensor.payload = tensor.payload[:10]
    request = model_server_pb2.ProcessOnceRequest(header=_header(KEY, [cut]), tensors=[tensor])
    with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as info:
        model_server_pb2_grpc.ModelServerServiceStub(channel).ProcessOnce(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "incomplete" in (info.value.details() or "")


def test_stream_without_header_is_invalid_argument(setup) -> None:  # type: ignore[no-untyped-def]
    node = setup[0]
    with grpc.insecure_channel(node.address) as channel:
        stub = model_server_pb2_grpc.ModelServerServiceStub(channel)
        tensor = encode_tensor(torch.ones(2), "t")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Process(iter([model_server_pb2.ProcessRequest(tensor=tensor)]), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_load_of_tampered_or_missing_artifact(setup, client: NodeClient, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from splitinfer.errors import FailedPrecondition

    _, _split, _, artifact, _ = setup
    with pytest.raises(NotFound):
        client.load_partition(str(tmp_path / "missing"), KEY)
    with pytest.raises(FailedPrecondition):
        client.load_partition(str(artifact), KEY, "f" * 64)


def test_status_and_health(setup, client: NodeClient) -> None:  # type: ignore[no-untyped-def]
    status = client.status()
    assert status.compute_flops > 0 and status.cpu_cores >= 1 and status.process_memory_bytes > 0
    assert any(p.partition.model == "tiny_cnn" and p.ready for p in status.partitions)
    with grpc.insecure_channel(setup[0].address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="splitinfer.v1.ModelServerService"), timeout=5
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        partition = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=f"splitinfer.partition/{KEY}"), timeout=5
        )
        assert partition.status == health_pb2.HealthCheckResponse.SERVING
