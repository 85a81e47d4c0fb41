"""What a node checks on a request's header alone (no sockets): routes, the trust boundary, the registry's
roles, memory budget, config contradictions."""

from __future__ import annotations

import pytest

from server_node.checks import MAX_REQUEST_ID_CHARS, MemoryBudget, RouteLimits, validate_route
from server_node.config import NodeConfig
from server_node.trust import RouteTrust, address_host
from splitinfer.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from splitinfer.registry import FRONTEND, EmbeddedRegistry, ServerRecord
from splitinfer.routing import downstream_planned_s
from splitinfer.v1 import model_server_pb2, route_pb2

REF = route_pb2.PartitionRef(model="m", variant="fp32", partition="p0")


def _chain(n: int, address: str = "a:1", planned_ms: float = 0.0) -> route_pb2.Route:
    steps = []
    for i in range(n):
        outputs = [route_pb2.TensorRoute(tensor_name=f"t{i}", consumer_steps=[i + 1] if i + 1 < n else [])]
        steps.append(route_pb2.RouteStep(partition=REF, addresses=[address], outputs=outputs, planned_ms=planned_ms))
    return route_pb2.Route(steps=steps)


def _header(route: route_pb2.Route, request_id: str = "r1", entry: int = 0) -> model_server_pb2.RequestHeader:
    return model_server_pb2.RequestHeader(request_id=request_id, route=route, entry_step=entry)


def local(step: route_pb2.RouteStep) -> bool:
    return "a:1" in step.addresses


def test_well_formed_routes_pass() -> None:
    validate_route(_header(_chain(3)), RouteLimits(), local)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (_header(_chain(3), request_id=""), "no request_id"),
        (_header(_chain(3), request_id="x" * (MAX_REQUEST_ID_CHARS + 1)), "characters"),
        (_header(route_pb2.Route()), "no steps"),
        (_header(_chain(65)), "65 steps"),
        (_header(_chain(3), entry=3), "out of range"),
        (_header(_chain(3, address="b:1")), "not assigned to this node"),
    ],
)
def test_bad_routes_are_invalid_argument(header: model_server_pb2.RequestHeader, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_route(header, RouteLimits(), local)


def test_cycles_and_fan_out_are_refused() -> None:
    cycle = _chain(3)
    cycle.steps[2].outputs[0].consumer_steps.append(1)
    with pytest.raises(InvalidArgument, match="later in the route"):
        validate_route(_header(cycle), RouteLimits(), local)
    wide = _chain(20)
    wide.steps[0].outputs[0].consumer_steps.extend(range(2, 20))
    with pytest.raises(InvalidArgument, match="fan-out"):
        validate_route(_header(wide), RouteLimits(max_fanout=16), local)


def test_downstream_planned_time_is_the_longest_chain_or_none() -> None:
    assert downstream_planned_s(_chain(3, planned_ms=10.0), 0) == pytest.approx(0.03)
    assert downstream_planned_s(_chain(3, planned_ms=10.0), 2) == pytest.approx(0.01)
    assert downstream_planned_s(_chain(3), 0) is None


def test_registry_roles_keep_front_ends_out_of_the_node_views() -> None:
    registry = EmbeddedRegistry()
    registry.register(ServerRecord("n:1", partitions=("m@fp32/p0",)), ttl_s=10)
    registry.register(ServerRecord("f:1", partitions=("m@fp32/p0",), role=FRONTEND), ttl_s=10)
    assert list(registry.servers()) == ["n:1"]
    assert [r.address for r in registry.replicas("m@fp32/p0")] == ["n:1"]
    assert list(registry.frontends()) == ["f:1"]
    assert ServerRecord.from_json(ServerRecord("f:1", role=FRONTEND).to_json()).role == FRONTEND
    with pytest.raises(InvalidArgument, match="role"):
        ServerRecord("x:1", role="planner")


def test_trust_allows_only_registered_addresses_and_known_sinks() -> None:
    registry = EmbeddedRegistry()
    registry.register(ServerRecord("10.0.0.2:1"), ttl_s=10)
    registry.register(ServerRecord("10.0.0.9:7", role=FRONTEND), ttl_s=10)
    trust = RouteTrust(registry, "10.0.0.1:1", tls=False)
    route = _chain(2, address="10.0.0.2:1")
    trust.check(route, "ipv4:10.0.0.5:4000")
    evil = _chain(2, address="10.9.9.9:22")
    with pytest.raises(PermissionDenied, match="not a registered server node"):
        trust.check(evil, "ipv4:10.0.0.5:4000")
    mixed = _chain(2, address="10.0.0.2:1")
    mixed.steps[1].addresses.append("10.9.9.9:22")
    mixed.steps[1].fallback_addresses.append("10.9.9.8:22")
    trust.check(mixed, "ipv4:10.0.0.5:4000")  # the unregistered ones are dropped, never contacted
    assert list(mixed.steps[1].addresses) == ["10.0.0.2:1"] and not mixed.steps[1].fallback_addresses
    route.sink = "10.0.0.9:7"
    trust.check(route, "ipv4:10.0.0.5:4000")  # a registered front-end
    route.sink = "10.0.0.5:9999"
    trust.check(route, "ipv4:10.0.0.5:4000")  # the caller itself
    route.sink = "10.0.0.6:9999"
    with pytest.raises(PermissionDenied, match="neither"):
        trust.check(route, "ipv4:10.0.0.5:4000")
    assert address_host("[::1]:5") == "::1"


def test_memory_budget_reserves_and_releases() -> None:
    budget = MemoryBudget(100)
    with budget.reserve(60):
        with pytest.raises(ResourceExhausted, match="memory budget"), budget.reserve(50):
            pass
        assert budget.used_bytes == 60
    assert budget.used_bytes == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_in_flight": 100, "max_streams": 50}, "admission control could never trigger"),
        ({"max_streams_per_peer": 10, "max_streams": 5, "max_in_flight": 5}, "max_streams_per_peer"),
        ({"idle_timeout_s": 0}, "idle_timeout_s"),
        ({"chunk_bytes": 64 << 20}, "chunk_bytes"),
    ],
)
def test_contradictory_node_configs_are_refused(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NodeConfig(**fields)  # type: ignore[arg-type]
