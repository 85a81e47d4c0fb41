"""What a node does with one request: run its steps of the route, forward, deliver.

Transport-free: the servicer hands in the decoded header and the tensors received, and a ``Forwarder`` that
calls other nodes. Outputs are encoded once with the codec their route names and the same encoded message is
sent to every consumer (fan-out without re-encoding); tensors that came in encoded and only need to travel on
are forwarded as received.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from server_node.host import PartitionHost
from splitinfer.codecs import CodecSpec, DecodeLimits, decode_tensor, encode_tensor
from splitinfer.errors import DeadlineExceeded, InvalidArgument
from splitinfer.runtime import PartitionKey
from splitinfer.v1 import model_server_pb2, route_pb2, tensor_pb2

__all__ = ["Forwarder", "RequestExecutor", "key_of", "validate_route"]

Delivered = tensor_pb2.Tensor | model_server_pb2.StepTiming


class Forwarder(Protocol):
    """Sends a request on to the node of ``step`` and yields what it delivers back."""

    def forward(
        self,
        header: model_server_pb2.RequestHeader,
        step: route_pb2.RouteStep,
        tensors: list[tensor_pb2.Tensor],
        timeout_s: float | None,
    ) -> Iterator[Delivered]: ...


def key_of(ref: route_pb2.PartitionRef) -> PartitionKey:
    return PartitionKey(ref.model, ref.variant, ref.partition)


def validate_route(header: model_server_pb2.RequestHeader) -> None:
    """InvalidArgument unless the route is a well-formed DAG in topological order."""
    steps = header.route.steps
    if not header.request_id:
        raise InvalidArgument("request header has no request_id")
    if not steps:
        raise InvalidArgument("route has no steps")
    if header.entry_step >= len(steps):
        raise InvalidArgument(f"entry_step {header.entry_step} is out of range for a route of {len(steps)} steps")
    for index, step in enumerate(steps):
        ref = step.partition
        if not (ref.model and ref.variant and ref.partition):
            raise InvalidArgument(f"route step {index} does not name model, variant and partition")
        for out in step.outputs:
            for consumer in out.consumer_steps:
                if consumer <= index or consumer >= len(steps):
                    raise InvalidArgument(
                        f"route step {index} sends {out.tensor_name!r} to step {consumer}: "
                        "consumers must come later in the route (topological order)"
                    )


@dataclass
class _Deadline:
    at: float | None  # time.monotonic() value

    def remaining_s(self) -> float | None:
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("request deadline passed")
        return left


class RequestExecutor:
    """Runs the steps of one request that belong to this node."""

    def __init__(self, host: PartitionHost, address: str, forwarder: Forwarder, limits: DecodeLimits) -> None:
        self._host = host
        self._address = address
        self._forwarder = forwarder
        self._limits = limits

    def _is_local(self, step: route_pb2.RouteStep) -> bool:
        return not step.addresses or self._address in step.addresses

    def execute(
        self,
        header: model_server_pb2.RequestHeader,
        received: dict[str, tensor_pb2.Tensor],
        timeout_s: float | None,
    ) -> Iterator[Delivered]:
        """Yields delivered tensors (encoded) and step timings, in the order they become available."""
        validate_route(header)
        deadline = _Deadline(None if timeout_s is None else time.monotonic() + timeout_s)
        steps = header.route.steps
        encoded: dict[str, tensor_pb2.Tensor] = dict(received)
        decoded: dict[str, torch.Tensor] = {}
        pending = [header.entry_step]
        remote: dict[int, None] = {}
        done: set[int] = set()
        while pending:
            index = pending.pop(0)
            if index in done:
                continue
            done.add(index)
            step = steps[index]
            routes = list(step.outputs) or [
                route_pb2.TensorRoute(tensor_name=spec.name, deliver=True)
                for spec in self._host.get(key_of(step.partition)).outputs
            ]
            local: list[int] = []
            to_encode: list[route_pb2.TensorRoute] = []
            for out in routes:
                here = [c for c in out.consumer_steps if self._is_local(steps[c])]
                local.extend(here)
                remote.update((c, None) for c in out.consumer_steps if c not in here)
                if out.deliver or len(here) < len(out.consumer_steps):
                    to_encode.append(out)
            yield self._run_step(step, to_encode, encoded, decoded, deadline)
            for out in routes:
                if out.deliver:
                    yield encoded[out.tensor_name]
            for consumer in local:
                if consumer not in done and consumer not in pending:
                    pending.append(consumer)
            pending.sort()
        for consumer in remote:
            step = steps[consumer]
            needed = list(step.input_names)
            missing = [n for n in needed if n not in encoded]
            if missing:
                raise InvalidArgument(f"route step {consumer} needs {missing}, which no step on this node produced")
            forward_header = model_server_pb2.RequestHeader()
            forward_header.CopyFrom(header)
            forward_header.entry_step = consumer
            yield from self._forwarder.forward(
                forward_header, step, [encoded[n] for n in needed], deadline.remaining_s()
            )

    def _run_step(
        self,
        step: route_pb2.RouteStep,
        to_encode: list[route_pb2.TensorRoute],
        encoded: dict[str, tensor_pb2.Tensor],
        decoded: dict[str, torch.Tensor],
        deadline: _Deadline,
    ) -> model_server_pb2.StepTiming:
        """Runs one partition and encodes the outputs that leave this node; returns its timing."""
        key = key_of(step.partition)
        partition = self._host.get(key)
        names = [s.name for s in partition.inputs]
        missing = [n for n in names if n not in encoded and n not in decoded]
        if missing:
            raise InvalidArgument(f"partition {key} needs inputs {missing}, which this request did not carry")
        start = time.perf_counter()
        for name in names:
            if name not in decoded:
                decoded[name] = decode_tensor(encoded[name], self._limits)
        feeds = {name: decoded[name] for name in names}
        decode_ms = (time.perf_counter() - start) * 1e3
        with self._host.compute(key, deadline.remaining_s()) as queue_ms:
            deadline.remaining_s()
            start = time.perf_counter()
            outputs = partition.run(feeds)
            compute_ms = (time.perf_counter() - start) * 1e3
        decoded.update(outputs)
        start = time.perf_counter()
        for out in to_encode:
            if out.tensor_name not in outputs:
                raise InvalidArgument(f"route for {key} names output {out.tensor_name!r}, which it does not produce")
            encoded[out.tensor_name] = encode_tensor(
                outputs[out.tensor_name], out.tensor_name, CodecSpec.from_proto(out.encoding)
            )
        return model_server_pb2.StepTiming(
            node=self._address,
            partition=step.partition,
            queue_ms=queue_ms,
            compute_ms=compute_ms,
            decode_ms=decode_ms,
            encode_ms=(time.perf_counter() - start) * 1e3,
        )
