"""What a node checks before it spends anything on a request: the route, who it names, what the caller
may send, and the node's memory for requests in flight.

All of it runs on the header, before any tensor payload is buffered or decompressed:

* :func:`validate_route`: a request id of bounded length; at most ``max_route_steps`` steps; every step names
  its partition; consumers come later in the route (topological order, hence no cycles); each output feeds
  at most ``max_fanout`` steps and each step at most ``max_fanout`` in all; the entry step is in range and
  hosted here. Violations are InvalidArgument.
* :func:`entry_precheck`: each incoming tensor must be an input of the entry step's partition, with that
  input's dtype and shape, and sent at most once; the request's byte budget is what those inputs need raw
  (plus the small overhead a lossless codec can add), or ``max_request_bytes`` when set.
* :class:`MemoryBudget`: payload and decoded bytes reserved for every request in flight; a request that
  would exceed the node's budget is refused with ResourceExhausted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from splitinfer.codecs import dtypes
from splitinfer.errors import InvalidArgument, ResourceExhausted
from splitinfer.program import ValueSpec
from splitinfer.runtime import LoadedPartition
from splitinfer.v1 import model_server_pb2, route_pb2, tensor_pb2

__all__ = ["MAX_REQUEST_ID_CHARS", "MemoryBudget", "RouteLimits", "entry_precheck", "validate_route"]

#: Longest request id accepted.
MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class RouteLimits:
    max_steps: int = 64
    max_fanout: int = 16


def _overhead(nbytes: int) -> int:
    """Most bytes a losslessly compressed payload of ``nbytes`` may take (the bound the assembler uses)."""
    return nbytes + (nbytes >> 6) + 1024


def validate_route(
    header: model_server_pb2.RequestHeader, limits: RouteLimits, is_local: Callable[[route_pb2.RouteStep], bool]
) -> None:
    """InvalidArgument unless the route is well formed, within the limits, and its entry step is hosted here."""
    if not header.request_id:
        raise InvalidArgument("request header has no request_id")
    if len(header.request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"request_id is {len(header.request_id)} characters, over {MAX_REQUEST_ID_CHARS}")
    steps = header.route.steps
    if not steps:
        raise InvalidArgument("route has no steps")
    if len(steps) > limits.max_steps:
        raise InvalidArgument(f"route has {len(steps)} steps, over the limit of {limits.max_steps}")
    if header.entry_step >= len(steps):
        raise InvalidArgument(f"entry_step {header.entry_step} is out of range for a route of {len(steps)} steps")
    for index, step in enumerate(steps):
        ref = step.partition
        if not (ref.model and ref.variant and ref.partition):
            raise InvalidArgument(f"route step {index} does not name model, variant and partition")
        fed: set[int] = set()
        for out in step.outputs:
            if len(out.consumer_steps) > limits.max_fanout:
                raise InvalidArgument(
                    f"route step {index} sends {out.tensor_name[:100]!r} to {len(out.consumer_steps)} steps, "
                    f"over the fan-out limit of {limits.max_fanout}"
                )
            for consumer in out.consumer_steps:
                if consumer <= index or consumer >= len(steps):
                    raise InvalidArgument(
                        f"route step {index} sends {out.tensor_name[:100]!r} to step {consumer}: "
                        "consumers must come later in the route (topological order)"
                    )
            fed.update(out.consumer_steps)
        if len(fed) > limits.max_fanout:
            raise InvalidArgument(f"route step {index} feeds {len(fed)} steps, over the limit of {limits.max_fanout}")
        if len(step.outputs) > 4 * limits.max_fanout:
            raise InvalidArgument(f"route step {index} routes {len(step.outputs)} outputs")
    if not is_local(steps[header.entry_step]):
        raise InvalidArgument(f"route step {header.entry_step} is not assigned to this node")


def _spec_matches(head: tensor_pb2.Tensor, spec: ValueSpec) -> bool:
    try:
        wire = dtypes.from_torch(spec.dtype)
    except Exception:
        return False
    return head.dtype == wire and tuple(head.shape) == tuple(spec.shape)


def entry_precheck(
    partition: LoadedPartition, max_request_bytes: int
) -> tuple[Callable[[tensor_pb2.Tensor], None], int]:
    """(precheck, byte budget) for tensors sent to a step running ``partition``; see the module."""
    specs = {s.name: s for s in partition.inputs}

    def precheck(head: tensor_pb2.Tensor) -> None:
        spec = specs.get(head.name)
        if spec is None:
            raise InvalidArgument(
                f"partition {partition.key} does not read a tensor named {head.name[:100]!r}; "
                f"its inputs are {sorted(specs)}"
            )
        if not _spec_matches(head, spec):
            got = tensor_pb2.DataType.Name(head.dtype) if head.dtype in tensor_pb2.DataType.values() else head.dtype
            raise InvalidArgument(
                f"partition {partition.key} input {head.name!r} must be {spec}, got {got}{list(head.shape)[:16]}"
            )

    budget = sum(_overhead(s.nbytes) for s in specs.values())
    if max_request_bytes:
        budget = min(budget, max_request_bytes)
    return precheck, budget


class MemoryBudget:
    """Bytes reserved by the requests in flight on this node, bounded."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self.used_bytes = 0

    def take(self, nbytes: int) -> None:
        """Reserves ``nbytes``; ResourceExhausted when the budget cannot hold them. Pair with :meth:`give`."""
        with self._lock:
            if self.used_bytes + nbytes > self.limit_bytes:
                raise ResourceExhausted(
                    f"node memory budget for requests in flight is full ({self.used_bytes} of "
                    f"{self.limit_bytes} bytes reserved, this request needs {nbytes}); retry later"
                )
            self.used_bytes += nbytes

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.used_bytes -= nbytes

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        self.take(nbytes)
        try:
            yield
        finally:
            self.give(nbytes)
