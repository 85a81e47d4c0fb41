"""Bad input at every service handler: random and mutated protobufs, lying tensors, truncated streams,
decompression bombs, unknown models and partitions. Each call must end with a clear status code (never
INTERNAL or UNKNOWN), the servers must stay up, and memory must stay bounded.

The number of examples is small in CI (profile ``ci``) and large under ``make fuzz``
(``SPLITINFER_FUZZ_PROFILE=fuzz``). The tensor decoder alone is fuzzed in tests/unit/test_codecs_properties.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
import torch
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitinfer.codecs import encode_tensor
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.v1 import (
    frontend_pb2,
    model_pool_pb2,
    model_server_pb2,
    plan_pb2,
    result_store_pb2,
    route_pb2,
    tensor_pb2,
)
from tests.integration._system import MODEL, SmallSystem, small_system

settings.register_profile(
    "ci", max_examples=12, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)  # fmt: skip
settings.register_profile(
    "fuzz", max_examples=600, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)  # fmt: skip
PROFILE = settings.get_profile(os.environ.get("SPLITINFER_FUZZ_PROFILE", "ci"))

#: Codes that tell a client what was wrong with its request (or that the system cannot serve it now).
CLEAR = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
MEMORY_GROWTH_LIMIT_BYTES = 400 << 20


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallSystem]:
    with small_system(tmp_path_factory.mktemp("fuzz"), variants=("fp32",)) as running:
        yield running


def _seeds(system: SmallSystem) -> dict[str, tuple[str, list[bytes]]]:
    """A valid request for every method (kind, serialized messages), to be mutated."""
    x = encode_tensor(system.example, system.input_name)
    manifest = system.pool.manifest(system.pool.resolve(MODEL, "fp32", "default"))
    parts = [p["name"] for p in manifest["partitions"]]
    node = system.nodes[0].address
    route = route_pb2.Route(
        steps=[
            route_pb2.RouteStep(
                partition=route_pb2.PartitionRef(model=MODEL, variant="fp32", partition=parts[0]),
                addresses=[node],
                input_names=[system.input_name],
            )
        ]
    )
    header = model_server_pb2.RequestHeader(request_id="fuzz", route=route, timeout_ms=5000)
    device = plan_pb2.DeviceState(device_id="fuzz", compute_flops=0, uplink_mbps=10)
    plan_request = frontend_pb2.PlanRequest(model=MODEL, device=device)
    infer_header = frontend_pb2.InferHeader(request_id="fuzz-infer", device=device, timeout_ms=5000)
    oip_request = oip.ModelInferRequest(model_name=MODEL, model_version="fp32", id="fuzz-oip")
    oip_request.inputs.add(name=system.input_name, datatype="FP32", shape=list(system.example.shape))
    oip_request.raw_input_contents.append(system.example.numpy().tobytes())
    ser = lambda *messages: [m.SerializeToString() for m in messages]  # noqa: E731
    return {
        "/splitinfer.v1.FrontEndService/Plan": ("unary", ser(plan_request)),
        "/splitinfer.v1.FrontEndService/Infer": (
            "stream",
            ser(frontend_pb2.InferRequest(header=infer_header), frontend_pb2.InferRequest(tensor=x)),
        ),
        "/inference.GRPCInferenceService/ModelInfer": ("unary", ser(oip_request)),
        "/inference.GRPCInferenceService/ModelStreamInfer": ("stream", ser(oip_request)),
        "/inference.GRPCInferenceService/ModelMetadata": ("unary", ser(oip.ModelMetadataRequest(name=MODEL))),
        "/inference.GRPCInferenceService/ModelReady": ("unary", ser(oip.ModelReadyRequest(name=MODEL))),
        "/inference.GRPCInferenceService/ModelStatistics": ("unary", ser(oip.ModelStatisticsRequest(name=MODEL))),
        "/inference.GRPCInferenceService/RepositoryIndex": ("unary", ser(oip.RepositoryIndexRequest())),
        "/splitinfer.v1.ModelPoolService/ListModels": ("unary", ser(model_pool_pb2.ListModelsRequest())),
        "/splitinfer.v1.ModelPoolService/FetchArtifact": (
            "unary_stream", ser(model_pool_pb2.FetchArtifactRequest(sha256="0" * 64)),
        ),
        "/splitinfer.v1.ModelPoolService/PutArtifact": (
            "stream_unary",
            ser(model_pool_pb2.PutArtifactRequest(size_bytes=3, sha256="0" * 64, data=b"abc")),
        ),
        "/splitinfer.v1.ResultStoreService/PutResult": (
            "unary",
            ser(result_store_pb2.PutResultRequest(result=result_store_pb2.StoredResult(request_id="fuzz-put"))),
        ),
        "/splitinfer.v1.ResultStoreService/GetResult": (
            "unary", ser(result_store_pb2.GetResultRequest(request_id="x")),
        ),
        "/splitinfer.v1.ResultStoreService/QueryResults": ("unary", ser(result_store_pb2.QueryResultsRequest())),
        "/splitinfer.v1.ResultStoreService/QueryDetections": (
            "unary", ser(result_store_pb2.QueryDetectionsRequest(label="circle", min_score=0.5, page_size=3)),
        ),
        "/splitinfer.v1.ModelServerService/ProcessOnce": (
            "unary", ser(model_server_pb2.ProcessOnceRequest(header=header, tensors=[x])),
        ),
        "/splitinfer.v1.ModelServerService/Process": (
            "stream", ser(model_server_pb2.ProcessRequest(header=header), model_server_pb2.ProcessRequest(tensor=x)),
        ),
        "/splitinfer.v1.ModelServerService/GetStatus": ("unary", ser(model_server_pb2.GetStatusRequest())),
        "/splitinfer.v1.ModelServerService/LoadPartition": (
            "unary", ser(model_server_pb2.LoadPartitionRequest(source="/nonexistent/partition")),
        ),
        "/splitinfer.v1.ModelServerService/UnloadPartition": (
            "unary",
            ser(model_server_pb2.UnloadPartitionRequest(
                partition=route_pb2.PartitionRef(model="nope", partition="p9"))),
        ),
    }  # fmt: skip


def _target(system: SmallSystem, method: str) -> str:
    return system.nodes[0].address if "ModelServerService" in method else system.frontend.address


def _call(channel: grpc.Channel, method: str, kind: str, messages: list[bytes]) -> grpc.StatusCode:
    try:
        if kind == "unary":
            channel.unary_unary(method)(messages[0] if messages else b"", timeout=10)
        elif kind == "unary_stream":
            list(channel.unary_stream(method)(messages[0] if messages else b"", timeout=10))
        elif kind == "stream_unary":
            channel.stream_unary(method)(iter(messages), timeout=10)
        else:
            list(channel.stream_stream(method)(iter(messages), timeout=10))
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code()
    return grpc.StatusCode.OK


def _mutate(data: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    buffer = bytearray(data)
    for op, position, extra in ops:
        at = position % (len(buffer) + 1)
        if op == 0 and buffer:  # flip a byte
            buffer[at % len(buffer)] ^= extra[0] if extra else 0xFF
        elif op == 1:  # truncate
            del buffer[at:]
        elif op == 2:  # insert
            buffer[at:at] = extra
        elif op == 3:  # replace the tail
            buffer[at:] = extra
    return bytes(buffer)


OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=24)), max_size=6)


def _check_alive(system: SmallSystem) -> None:
    for address in (system.frontend.address, *(n.address for n in system.nodes)):
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, address


METHODS = [
    "/splitinfer.v1.FrontEndService/Plan",
    "/splitinfer.v1.FrontEndService/Infer",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelStreamInfer",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ModelStatistics",
    "/inference.GRPCInferenceService/RepositoryIndex",
    "/splitinfer.v1.ModelPoolService/ListModels",
    "/splitinfer.v1.ModelPoolService/FetchArtifact",
    "/splitinfer.v1.ModelPoolService/PutArtifact",
    "/splitinfer.v1.ResultStoreService/PutResult",
    "/splitinfer.v1.ResultStoreService/GetResult",
    "/splitinfer.v1.ResultStoreService/QueryResults",
    "/splitinfer.v1.ResultStoreService/QueryDetections",
    "/splitinfer.v1.ModelServerService/ProcessOnce",
    "/splitinfer.v1.ModelServerService/Process",
    "/splitinfer.v1.ModelServerService/GetStatus",
    "/splitinfer.v1.ModelServerService/LoadPartition",
    "/splitinfer.v1.ModelServerService/UnloadPartition",
]


@pytest.mark.parametrize("method", METHODS, ids=[m.rsplit("/", 1)[1] for m in METHODS])
def test_mutated_and_random_messages(system: SmallSystem, method: str) -> None:
    kind, seed = _seeds(system)[method]
    rss_before = psutil.Process().memory_info().rss
    channel = grpc.insecure_channel(_target(system, method))

    @PROFILE
    @given(
        ops=OPS,
        which=st.integers(0, 8),
        random=st.one_of(st.none(), st.binary(max_size=512)),
        drop=st.booleans(),
    )
    def fuzz(ops: list[tuple[int, int, bytes]], which: int, random: bytes | None, drop: bool) -> None:
        messages = list(seed)
        k = which % len(messages)
        messages[k] = random if random is not None else _mutate(messages[k], ops)
        if drop and len(messages) > 1:  # a truncated stream: the last message never arrives
            messages = messages[:-1]
        code = _call(channel, method, kind, messages)
        assert code in CLEAR, f"{method} answered {code} to {messages!r:.300}"

    fuzz()
    channel.close()
    _check_alive(system)
    growth = psutil.Process().memory_info().rss - rss_before
    assert growth < MEMORY_GROWTH_LIMIT_BYTES, f"memory grew by {growth / 2**20:.0f} MiB"


def test_unparseable_bytes_are_invalid_argument_not_internal(system: SmallSystem) -> None:
    garbage = b"\xff\xff\xff\xff\x0f"  # a truncated varint: no protobuf parser accepts it
    for method in METHODS:
        kind, _ = _seeds(system)[method]
        with grpc.insecure_channel(_target(system, method)) as channel:
            assert _call(channel, method, kind, [garbage]) == grpc.StatusCode.INVALID_ARGUMENT, method


@st.composite
def lying_tensors(draw: st.DrawFn) -> tensor_pb2.Tensor:
    """Tensors whose header does not match their payload: wrong dtype values, absurd shapes, sizes that lie."""
    shape = draw(st.lists(st.one_of(st.integers(-3, 64), st.integers(1 << 20, 1 << 62)), max_size=6))
    payload = draw(st.binary(max_size=256))
    return tensor_pb2.Tensor(
        name=draw(st.sampled_from(["input", "x", "", "relu"])),
        dtype=draw(st.integers(0, 14)),
        shape=shape,
        encoding=tensor_pb2.Encoding(
            lossy=draw(st.integers(0, 7)),
            lossless=draw(st.integers(0, 5)),
            scales=draw(st.lists(st.floats(allow_nan=True), max_size=3)),
            zero_points=draw(st.lists(st.integers(-(1 << 31), (1 << 31) - 1), max_size=3)),
        ),
        payload_size_bytes=draw(st.one_of(st.just(len(payload)), st.integers(0, 1 << 63))),
        payload=payload,
    )


def test_lying_tensors_are_refused_with_invalid_argument(system: SmallSystem) -> None:
    seeds = _seeds(system)
    header = model_server_pb2.ProcessOnceRequest.FromString(
        seeds["/splitinfer.v1.ModelServerService/ProcessOnce"][1][0]
    ).header
    channel = grpc.insecure_channel(system.nodes[0].address)

    @PROFILE
    @given(tensor=lying_tensors())
    def fuzz(tensor: tensor_pb2.Tensor) -> None:
        request = model_server_pb2.ProcessOnceRequest(header=header, tensors=[tensor])
        code = _call(channel, "/splitinfer.v1.ModelServerService/ProcessOnce", "unary", [request.SerializeToString()])
        assert code in CLEAR, tensor

    fuzz()
    channel.close()
    _check_alive(system)


def test_decompression_bombs_and_enormous_shapes_are_refused_before_allocating(system: SmallSystem) -> None:
    seeds = _seeds(system)
    header = model_server_pb2.ProcessOnceRequest.FromString(
        seeds["/splitinfer.v1.ModelServerService/ProcessOnce"][1][0]
    ).header
    rss_before = psutil.Process().memory_info().rss
    bomb = zstandard.ZstdCompressor().compress(bytes(256 << 20))  # 256 MiB of zeros in a few KiB
    cases = {
        # declares the model input's small shape; the frame inflates far beyond it
        "bomb": tensor_pb2.Tensor(name=system.input_name, dtype=tensor_pb2.DATA_TYPE_FLOAT32,
                                  shape=list(system.example.shape),
                                  encoding=tensor_pb2.Encoding(lossless=tensor_pb2.LOSSLESS_CODEC_ZSTD),
                                  payload_size_bytes=len(bomb), payload=bomb),
        # declares 8 GiB: refused from the header alone
        "huge": tensor_pb2.Tensor(name=system.input_name, dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1 << 31],
                                  encoding=tensor_pb2.Encoding(lossless=tensor_pb2.LOSSLESS_CODEC_ZSTD),
                                  payload_size_bytes=len(bomb), payload=bomb),
    }  # fmt: skip
    with grpc.insecure_channel(system.nodes[0].address) as channel:
        for name, tensor in cases.items():
            request = model_server_pb2.ProcessOnceRequest(header=header, tensors=[tensor])
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/splitinfer.v1.ModelServerService/ProcessOnce")(
                    request.SerializeToString(), timeout=30
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value.details())
    assert psutil.Process().memory_info().rss - rss_before < 200 << 20  # the bomb never inflated


def test_nan_and_inf_inputs_follow_the_documented_policy(system: SmallSystem) -> None:
    """NaN and Inf are data: they travel unchanged through lossless codecs and reach the model; only int8
    quantisation refuses them (it cannot represent them), with a clear error at the sender."""
    from splitinfer.codecs import CodecSpec, EncodeError, decode_tensor

    x = system.example.clone()
    x.view(-1)[0] = float("nan")
    x.view(-1)[1] = float("inf")
    for codec in ("none", "zstd", "fp16+lz4"):
        back = decode_tensor(encode_tensor(x, "x", CodecSpec.parse(codec)))
        assert torch.isnan(back.view(-1)[0]) and torch.isinf(back.view(-1)[1])
    with pytest.raises(EncodeError, match="finite"):
        encode_tensor(x, "x", CodecSpec.parse("int8"))
    request = oip.ModelInferRequest(model_name=MODEL, model_version="fp32")
    request.inputs.add(name=system.input_name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.numpy().tobytes())
    with grpc.insecure_channel(system.frontend.address) as channel:
        response = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", response_deserializer=oip.ModelInferResponse.FromString
        )(request.SerializeToString(), timeout=30)
    assert response.raw_output_contents  # computed (NaN propagates through the model; nothing crashed)


def test_unknown_models_and_partitions_are_not_found(system: SmallSystem, tmp_path: Path) -> None:
    with grpc.insecure_channel(system.frontend.address) as channel:
        plan = channel.unary_unary("/splitinfer.v1.FrontEndService/Plan")
        with pytest.raises(grpc.RpcError) as info:
            plan(frontend_pb2.PlanRequest(model="nope", device=plan_pb2.DeviceState(compute_flops=1, uplink_mbps=1))
                 .SerializeToString(), timeout=10)  # fmt: skip
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    header = model_server_pb2.RequestHeader(
        request_id="ghost",
        route=route_pb2.Route(steps=[route_pb2.RouteStep(
            partition=route_pb2.PartitionRef(model="ghost", variant="fp32", partition="p0"),
            addresses=[system.nodes[0].address], input_names=["x"])]),
    )  # fmt: skip
    request = model_server_pb2.ProcessOnceRequest(header=header, tensors=[encode_tensor(torch.ones(2), "x")])
    with grpc.insecure_channel(system.nodes[0].address) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/splitinfer.v1.ModelServerService/ProcessOnce")(request.SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
