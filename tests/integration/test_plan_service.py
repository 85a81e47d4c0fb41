"""FrontEndService.Plan over real gRPC: plans from the pool's variants and the registry's servers."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from splitinfer.divider import partition_at
from splitinfer.frontend.server import FrontEndConfig, start_frontend
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.planner import Plan
from splitinfer.pool import ModelPool
from splitinfer.registry import EmbeddedRegistry, ServerRecord
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, plan_pb2
from splitinfer.variants import make_variant
from splitinfer.zoo import build


@pytest.fixture(scope="module")
def frontend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, EmbeddedRegistry]]:
    pool = ModelPool(tmp_path_factory.mktemp("pool"))
    model, example = build("residual_cnn")
    for kind, accuracy in (("fp32", 0.91), ("int8", 0.9)):
        program = make_variant(model, example, kind)
        graph = ModelGraph.build(program, example)
        cuts = [c.position for c in narrow_cuts(graph)][1:-1:3]
        pool.add_division(
            partition_at(graph, "residual_cnn", cuts), variant=kind, division_name="default",
            task="image-classification-32", accuracy=accuracy,
        )  # fmt: skip
    registry = EmbeddedRegistry()
    hosted = tuple(
        f"residual_cnn@{e.variant}/{p['name']}"
        for e in pool.variants()
        for p in pool.manifest(e.divisions["default"])["partitions"]
    )
    registry.register(ServerRecord("10.9.9.1:7000", hosted, compute_flops=5e10), ttl_s=600)
    frontend = start_frontend(FrontEndConfig(pool_dir=str(pool.root)), registry=registry)
    try:
        yield frontend.address, registry
    finally:
        frontend.stop(1)


def _plan(address: str, **kwargs: object) -> frontend_pb2.PlanResponse:
    device = plan_pb2.DeviceState(
        device_id="phone-1", device_class="phone", compute_flops=2e8, uplink_mbps=18.88, downlink_mbps=40,
        rtt_ms=20, battery_percent=80, charging=True,
    )  # fmt: skip
    request = frontend_pb2.PlanRequest(model="residual_cnn", device=device)
    for key, value in kwargs.items():
        if key == "model":
            request.model = str(value)
        elif key == "uplink_mbps":
            request.device.uplink_mbps = float(value)  # type: ignore[arg-type]
        elif key == "requirements":
            request.requirements.CopyFrom(value)  # type: ignore[arg-type]
    with grpc.insecure_channel(address) as channel:
        return frontend_pb2_grpc.FrontEndServiceStub(channel).Plan(request, timeout=30)


def test_plan_uses_servers_from_the_registry(frontend) -> None:  # type: ignore[no-untyped-def]
    address, _ = frontend
    response = _plan(address)
    plan = Plan.from_proto(response.plan)
    assert plan.model == "residual_cnn" and plan.solver in ("chain", "dag-dp")  # exact either way
    assert any(p.where == "10.9.9.1:7000" for p in plan.placements)
    # The device gets its share and an id; the route stays with the front-end.
    assert plan.route is None and response.plan.plan_id and response.plan.entry_tensors
    assert response.plan.expires_unix_ms > 0
    slow = Plan.from_proto(_plan(address, uplink_mbps=0.05).plan)
    assert len(slow.device_partitions) > len(plan.device_partitions)


def test_requirements_shape_the_plan(frontend) -> None:  # type: ignore[no-untyped-def]
    address, _ = frontend
    strict = Plan.from_proto(_plan(address, requirements=plan_pb2.Requirements(min_accuracy=0.905)).plan)
    assert strict.variant == "fp32" and strict.feasible
    impossible = Plan.from_proto(_plan(address, requirements=plan_pb2.Requirements(max_latency_ms=0.01)).plan)
    assert impossible.violated == ("max_latency_ms",)


def test_bad_plan_requests_get_clear_codes(frontend) -> None:  # type: ignore[no-untyped-def]
    address, _ = frontend
    with pytest.raises(grpc.RpcError) as info:
        _plan(address, model="nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        _plan(address, uplink_mbps=0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        _plan(address, model="m" * (1 << 20))  # a 1 MiB name: refused, and not echoed back
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(info.value.details()) < 300
