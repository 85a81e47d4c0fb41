"""Planning problems from the live system: pool manifests, registry records, and the device's report."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from splitinfer.divider import Division
from splitinfer.errors import InvalidArgument
from splitinfer.planner.problem import (
    CodecProfile,
    DeviceProfile,
    Edge,
    PartitionCost,
    PlanningProblem,
    Requirements,
    ServerProfile,
    VariantProfile,
)
from splitinfer.planner.profiles import DEFAULT_CODECS
from splitinfer.pool.manifest import parse_spec
from splitinfer.registry import ServerRecord
from splitinfer.v1 import plan_pb2

__all__ = [
    "device_profile",
    "problem_from",
    "requirements",
    "server_profiles",
    "spec_bytes",
    "variant_from_division",
    "variant_profile",
]

#: Expected wait per request already in flight on a server, when it reports no better estimate.
QUEUE_MS_PER_REQUEST = 5.0
_OBJECTIVES = {
    plan_pb2.OBJECTIVE_UNSPECIFIED: "auto",
    plan_pb2.OBJECTIVE_LATENCY: "latency",
    plan_pb2.OBJECTIVE_ENERGY: "energy",
}


def spec_bytes(spec: str) -> tuple[str, int]:
    """("name", bytes) of a manifest tensor spec such as ``"relu_3:float32[1, 64, 56, 56]"``."""
    parsed = parse_spec(spec)
    return parsed.name, parsed.nbytes


def variant_profile(manifest: Mapping[str, Any]) -> VariantProfile:
    """A variant's partitions and tensor edges from its division manifest."""
    parts = manifest["partitions"]
    index = {p["name"]: k for k, p in enumerate(parts)}
    n = len(parts)
    sizes: dict[str, int] = {}
    for spec in manifest["inputs"]:
        name, nbytes = spec_bytes(spec)
        sizes[name] = nbytes
    for part in parts:
        for spec in part["outputs"]:
            name, nbytes = spec_bytes(spec)
            sizes[name] = nbytes
    model_inputs = [spec_bytes(s)[0] for s in manifest["inputs"]]
    model_outputs = {spec_bytes(s)[0] for s in manifest["outputs"]}
    edges = []
    for k, part in enumerate(parts):
        for spec in part["inputs"]:
            name = spec_bytes(spec)[0]
            if name in model_inputs:
                edges.append(Edge(name, -1, k, sizes[name]))
        for tensor, successors in part["successors"].items():
            for successor in successors:
                edges.append(Edge(tensor, k, index[successor], sizes[tensor]))
            if tensor in model_outputs:
                edges.append(Edge(tensor, k, n, sizes[tensor]))
    return VariantProfile(
        model=manifest["model"],
        variant=manifest["variant"],
        accuracy=float(manifest.get("accuracy", 0.0)),
        accuracy_measured=bool(manifest.get("accuracy_measured", False)),
        partitions=tuple(PartitionCost(p["name"], float(p["flops"]), int(p["param_bytes"])) for p in parts),
        edges=tuple(edges),
    )


def server_profiles(records: Iterable[ServerRecord]) -> tuple[ServerProfile, ...]:
    return tuple(
        ServerProfile(
            address=r.address,
            flops=r.compute_flops or 1e9,
            queue_ms=r.in_flight * QUEUE_MS_PER_REQUEST,
            hosts=frozenset(r.partitions),
        )
        for r in sorted(records, key=lambda r: r.address)
    )


def device_profile(state: plan_pb2.DeviceState) -> DeviceProfile:
    if state.compute_flops < 0 or state.uplink_mbps <= 0:
        raise InvalidArgument("device state needs compute_flops >= 0 (0: runs nothing) and uplink_mbps above 0")
    return DeviceProfile(
        flops=state.compute_flops or 1.0,
        computes=state.compute_flops > 0,
        uplink_mbps=state.uplink_mbps,
        downlink_mbps=state.downlink_mbps or state.uplink_mbps,
        rtt_ms=state.rtt_ms,
        battery_percent=state.battery_percent if state.battery_percent > 0 else 100.0,
        charging=state.charging,
        compute_power_w=state.compute_power_w or 3.0,
        transmit_power_w=state.transmit_power_w or 1.5,
        device_class=state.device_class,
    )


def requirements(message: plan_pb2.Requirements) -> Requirements:
    if message.max_latency_ms < 0 or not 0 <= message.min_accuracy <= 1:
        raise InvalidArgument("max_latency_ms must be >= 0 and min_accuracy within [0, 1]")
    return Requirements(message.max_latency_ms, message.min_accuracy, _OBJECTIVES.get(message.objective, "auto"))


def problem_from(
    manifests: Iterable[Mapping[str, Any]],
    records: Iterable[ServerRecord],
    state: plan_pb2.DeviceState,
    wanted: plan_pb2.Requirements,
    codecs: tuple[CodecProfile, ...] = DEFAULT_CODECS,
) -> PlanningProblem:
    variants = tuple(variant_profile(m) for m in manifests)
    if not variants:
        raise InvalidArgument("no variant to plan with")
    return PlanningProblem(variants, device_profile(state), server_profiles(records), codecs, requirements(wanted))


def variant_from_division(division: Division, variant: str, accuracy: float, measured: bool = False) -> VariantProfile:
    """A variant profile straight from a Division (no pool needed): for tests, benchmarks, simulations."""
    index = {p.name: k for k, p in enumerate(division.partitions)}
    n = len(division.partitions)
    model_inputs = set(division.program.input_names)
    model_outputs = set(division.program.output_names)
    edges = []
    for k, part in enumerate(division.partitions):
        for spec in part.inputs:
            if spec.name in model_inputs:
                edges.append(Edge(spec.name, -1, k, spec.nbytes))
        sizes = {s.name: s.nbytes for s in part.outputs}
        for tensor, successors in part.successors:
            edges.extend(Edge(tensor, k, index[s], sizes[tensor]) for s in successors)
            if tensor in model_outputs:
                edges.append(Edge(tensor, k, n, sizes[tensor]))
    return VariantProfile(
        model=division.model,
        variant=variant,
        accuracy=accuracy,
        accuracy_measured=measured,
        partitions=tuple(PartitionCost(p.name, float(p.flops), p.param_bytes) for p in division.partitions),
        edges=tuple(edges),
    )
