"""Routes from divisions: the partition DAG of a request with a node (or replicas) per partition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from splitinfer.codecs import CodecSpec
from splitinfer.divider import PartitionSpec
from splitinfer.errors import InvalidArgument
from splitinfer.v1 import route_pb2

__all__ = ["build_route", "downstream_planned_s", "entry_steps"]

_NO_CODEC = CodecSpec()


def build_route(
    model: str,
    variant: str,
    partitions: Sequence[PartitionSpec],
    addresses: Mapping[str, Sequence[str]],
    *,
    codecs: Mapping[str, CodecSpec] | None = None,
    default_codec: CodecSpec = _NO_CODEC,
    sink: str = "",
    model_outputs: Sequence[str] = (),
) -> route_pb2.Route:
    """A route running ``partitions`` (topological order) on ``addresses[partition name]`` (replicas).

    Outputs read by later partitions go to them with ``codecs[tensor]`` (else ``default_codec``); model
    outputs (``model_outputs``, or those with no successor) are delivered.
    """
    index = {p.name: i for i, p in enumerate(partitions)}
    codecs = codecs or {}
    steps = []
    for part in partitions:
        if part.name not in addresses or not addresses[part.name]:
            raise InvalidArgument(f"no address for partition {part.name}")
        outputs = []
        for tensor, successors in part.successors:
            unknown = [s for s in successors if s not in index]
            if unknown:
                raise InvalidArgument(f"partition {part.name} feeds unknown partitions {unknown}")
            outputs.append(
                route_pb2.TensorRoute(
                    tensor_name=tensor,
                    consumer_steps=[index[s] for s in successors],
                    deliver=not successors or tensor in model_outputs,
                    encoding=codecs.get(tensor, default_codec).to_proto(),
                )
            )
        steps.append(
            route_pb2.RouteStep(
                partition=route_pb2.PartitionRef(model=model, variant=variant, partition=part.name),
                addresses=list(addresses[part.name]),
                input_names=[s.name for s in part.inputs],
                outputs=outputs,
            )
        )
    return route_pb2.Route(steps=steps, sink=sink)


def entry_steps(route: route_pb2.Route) -> list[int]:
    """Steps no other step feeds: where a caller sends the request's inputs."""
    fed = {c for step in route.steps for out in step.outputs for c in out.consumer_steps}
    return [i for i in range(len(route.steps)) if i not in fed]


def downstream_planned_s(route: route_pb2.Route, step: int) -> float | None:
    """Planned seconds of ``step`` and the longest chain of steps after it (``RouteStep.planned_ms``); None
    when any of them is unplanned (0), so that callers fall back to a share of the deadline."""
    memo: dict[int, float | None] = {}
    for index in range(len(route.steps) - 1, step - 1, -1):
        own = route.steps[index].planned_ms
        if own <= 0:
            memo[index] = None
            continue
        after = [memo.get(c) for out in route.steps[index].outputs for c in out.consumer_steps if c > index]
        if any(a is None for a in after):
            memo[index] = None
        else:
            memo[index] = own / 1e3 + max((a for a in after if a is not None), default=0.0)
    return memo.get(step)
