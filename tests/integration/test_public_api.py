"""The splitinfer.v1 API on its own, as a client in another language would use it: discover a model's inputs,
say which codecs the client can decode and get plans that keep to them, and find every service by server
reflection (v1 and v1alpha), health included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, plan_pb2, tensor_pb2
from tests.integration._system import MODEL, SmallSystem, small_system

THIN = plan_pb2.DeviceState(device_id="js-client", compute_flops=0, uplink_mbps=5, rtt_ms=5)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallSystem]:
    with small_system(tmp_path_factory.mktemp("public-api")) as running:
        yield running


def _stub(system: SmallSystem) -> frontend_pb2_grpc.FrontEndServiceStub:
    return frontend_pb2_grpc.FrontEndServiceStub(grpc.insecure_channel(system.frontend.address))


def test_a_client_learns_a_models_inputs_outputs_variants_and_codecs(system: SmallSystem) -> None:
    meta = _stub(system).GetModelMetadata(frontend_pb2.GetModelMetadataRequest(model=MODEL), timeout=10)
    assert [(t.name, list(t.shape), t.dtype) for t in meta.inputs] == [
        (system.input_name, list(system.example.shape), tensor_pb2.DATA_TYPE_FLOAT32)
    ]
    assert [t.name for t in meta.outputs] == [system.output_name]
    assert {v.name for v in meta.variants} == {"fp32", "fp16"} and all(v.partitions >= 2 for v in meta.variants)
    assert meta.task == "residual" and len(meta.codecs) >= 2
    for bad, code in ((MODEL + "-nope", grpc.StatusCode.NOT_FOUND), ("m" * 100_000, grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as info:
            _stub(system).GetModelMetadata(frontend_pb2.GetModelMetadataRequest(model=bad), timeout=10)
        assert info.value.code() == code and len(info.value.details()) < 1100


def _plan(system: SmallSystem, device: plan_pb2.DeviceState, min_accuracy: float = 0.0) -> plan_pb2.ExecutionPlan:
    request = frontend_pb2.PlanRequest(model=MODEL, device=device,
                                       requirements=plan_pb2.Requirements(min_accuracy=min_accuracy))  # fmt: skip
    return _stub(system).Plan(request, timeout=30).plan


def test_plans_keep_to_the_codecs_a_client_accepts(system: SmallSystem) -> None:
    no_lz4 = plan_pb2.DeviceState()
    no_lz4.CopyFrom(THIN)
    no_lz4.accepted_lossless.extend([tensor_pb2.LOSSLESS_CODEC_NONE, tensor_pb2.LOSSLESS_CODEC_ZSTD])
    plan = _plan(system, no_lz4)
    assert plan.crossings, "a thin client's plan crosses tensors"
    assert all(c.encoding.lossless != tensor_pb2.LOSSLESS_CODEC_LZ4 for c in plan.crossings), plan
    lossless_only = plan_pb2.DeviceState()
    lossless_only.CopyFrom(THIN)
    lossless_only.accepted_lossy.append(tensor_pb2.LOSSY_CODEC_NONE)
    plan = _plan(system, lossless_only)
    assert all(c.encoding.lossy in (tensor_pb2.LOSSY_CODEC_NONE, 0) for c in plan.crossings), plan
    impossible = plan_pb2.DeviceState()
    impossible.CopyFrom(THIN)
    impossible.accepted_lossy.append(tensor_pb2.LOSSY_CODEC_BF16)
    with pytest.raises(grpc.RpcError) as info:
        _plan(system, impossible)
    assert (
        info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "accepts none of the codecs" in info.value.details()
    )


def _services(address: str, service: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        [answer] = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    return [s.name for s in answer.list_services_response.service]


@pytest.mark.parametrize("service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"])
def test_every_server_lists_its_services_and_health_by_reflection(system: SmallSystem, service: str) -> None:
    front = _services(system.frontend.address, service)
    assert {"splitinfer.v1.FrontEndService", "inference.GRPCInferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"} <= set(front)  # fmt: skip
    node = _services(system.nodes[0].address, service)
    assert {"splitinfer.v1.ModelServerService", "grpc.health.v1.Health"} <= set(node)


def test_the_plan_names_its_division(system: SmallSystem, tmp_path: Path) -> None:
    plan = _plan(system, THIN)
    assert plan.division_sha256 == system.pool.resolve(MODEL, plan.variant, "default")
