"""What a node does with one request: run its steps of the route, forward, join, deliver.

Transport-free: the servicer hands in the decoded header, the tensors received, and a ``Forwarder`` that
calls other nodes (and the sink). Outputs are encoded once with the codec their route names and the same
encoded message goes to every consumer (fan-out without re-encoding); tensors that came in encoded and
only travel on are forwarded as received. Forwards to several nodes run in parallel.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import torch

from server_node.host import PartitionHost
from server_node.joins import JoinTable
from splitinfer.codecs import CodecSpec, DecodeLimits, decode_tensor, encode_tensor
from splitinfer.errors import DeadlineExceeded, InvalidArgument
from splitinfer.runtime import PartitionKey
from splitinfer.v1 import model_server_pb2, route_pb2, tensor_pb2

__all__ = ["CallScope", "Forwarder", "RequestExecutor", "key_of", "validate_route"]

Delivered = tensor_pb2.Tensor | model_server_pb2.StepTiming


class CallScope:
    """The outgoing calls of one request, cancelled together when the request is cancelled or fails."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[grpc.Future] = []
        self.cancelled = threading.Event()

    def add(self, call: grpc.Future) -> None:
        with self._lock:
            self._calls.append(call)
            cancelled = self.cancelled.is_set()
        if cancelled:
            call.cancel()

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            calls = list(self._calls)
        for call in calls:
            call.cancel()


class Forwarder(Protocol):
    """Sends a request on to the node of ``step`` and yields what it delivers back."""

    def forward(
        self,
        header: model_server_pb2.RequestHeader,
        step: route_pb2.RouteStep,
        tensors: list[tensor_pb2.Tensor],
        timeout_s: float | None,
        scope: CallScope,
    ) -> Iterator[Delivered]: ...

    def deliver(
        self,
        sink: str,
        request_id: str,
        tensors: list[tensor_pb2.Tensor],
        timings: list[model_server_pb2.StepTiming],
        timeout_s: float | None,
    ) -> None: ...


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


def _is_join(steps: Sequence[route_pb2.RouteStep], index: int) -> bool:
    """Whether the route feeds step ``index`` from two or more sources (steps, or the caller plus a step)."""
    route_steps = list(steps)
    producers = {j for j, s in enumerate(route_steps) for out in s.outputs if index in out.consumer_steps}
    produced = {out.tensor_name for j in producers for out in route_steps[j].outputs}
    from_caller = any(name not in produced for name in route_steps[index].input_names)
    return len(producers) + int(from_caller) >= 2


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


@dataclass
class _State:
    """Tensors of one request on this node, encoded (as received or sent) and decoded (as computed)."""

    encoded: dict[str, tensor_pb2.Tensor]
    decoded: dict[str, torch.Tensor] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.encoded or name in self.decoded

    def value(self, name: str) -> object:
        return self.decoded[name] if name in self.decoded else self.encoded[name]

    def add(self, name: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            self.decoded.setdefault(name, value)
        else:
            assert isinstance(value, tensor_pb2.Tensor)
            self.encoded.setdefault(name, value)


class RequestExecutor:
    """Runs the steps of one request that belong to this node."""

    def __init__(
        self,
        host: PartitionHost,
        address: str,
        forwarder: Forwarder,
        limits: DecodeLimits,
        *,
        join_timeout_s: float = 30.0,
        slowdown_factor: float = 1.0,
    ) -> None:
        self._slowdown_factor = slowdown_factor
        self._host = host
        self._address = address
        self._forwarder = forwarder
        self._limits = limits
        self._join_timeout_s = join_timeout_s
        self.joins = JoinTable()

    def _is_local(self, step: route_pb2.RouteStep) -> bool:
        return not step.addresses or self._address in step.addresses

    def execute(
        self,
        header: model_server_pb2.RequestHeader,
        received: dict[str, tensor_pb2.Tensor],
        timeout_s: float | None,
        scope: CallScope | None = None,
    ) -> Iterator[Delivered]:
        """Yields delivered tensors (encoded) and step timings, in the order they become available.

        With a sink in the route, delivered tensors go to the sink instead (with this node's timings) and
        only timings are yielded.
        """
        validate_route(header)
        scope = scope or CallScope()
        deadline = _Deadline(None if timeout_s is None else time.monotonic() + timeout_s)
        steps = header.route.steps
        sink = header.route.sink
        state = _State(dict(received))
        pending = [header.entry_step]
        remote: dict[int, None] = {}
        done: set[int] = set()
        to_sink: list[tensor_pb2.Tensor] = []
        timings: list[model_server_pb2.StepTiming] = []
        while pending:
            index = pending.pop(0)
            if index in done:
                continue
            done.add(index)
            step = steps[index]
            partition = self._host.get(key_of(step.partition))
            needed = [s.name for s in partition.inputs]
            if not all(state.has(n) for n in needed):
                if not _is_join(steps, index):
                    missing = [n for n in needed if not state.has(n)]
                    raise InvalidArgument(
                        f"partition {key_of(step.partition)} needs inputs {missing}, which this request did not carry"
                    )
                joined = self._join(header.request_id, index, needed, state, deadline)
                if joined is None:
                    continue  # another call completed the join and runs this step
            routes = list(step.outputs) or [
                route_pb2.TensorRoute(tensor_name=spec.name, deliver=True) for spec in partition.outputs
            ]
            local: list[int] = []
            to_encode: list[route_pb2.TensorRoute] = []
            for out in routes:
                here = [c for c in out.consumer_steps if self._is_local(steps[c])]
                local.extend(here)
                remote.update((c, None) for c in out.consumer_steps if c not in here)
                if out.deliver or len(here) < len(out.consumer_steps):
                    to_encode.append(out)
            timing = self._run_step(step, to_encode, state, deadline)
            timings.append(timing)
            yield timing
            for out in routes:
                if out.deliver:
                    if sink:
                        to_sink.append(state.encoded[out.tensor_name])
                    else:
                        yield state.encoded[out.tensor_name]
            for consumer in local:
                if consumer not in done and consumer not in pending:
                    pending.append(consumer)
            pending.sort()
        if to_sink:
            self._forwarder.deliver(sink, header.request_id, to_sink, timings, deadline.remaining_s())
        jobs = []
        for consumer in remote:
            step = steps[consumer]
            carried = [n for n in step.input_names if n in state.encoded]
            if not carried:
                raise InvalidArgument(f"route step {consumer} needs {list(step.input_names)}; this node has none")
            forward_header = model_server_pb2.RequestHeader()
            forward_header.CopyFrom(header)
            forward_header.entry_step = consumer
            jobs.append((forward_header, step, [state.encoded[n] for n in carried]))
        yield from self._forward_all(jobs, deadline, scope)

    def _join(
        self, request_id: str, index: int, needed: list[str], state: _State, deadline: _Deadline
    ) -> dict[str, object] | None:
        have = {n: state.value(n) for n in needed if state.has(n)}
        remaining = deadline.remaining_s()
        wait_s = self._join_timeout_s if remaining is None else min(self._join_timeout_s, remaining)
        joined = self.joins.deposit((request_id, index), have, frozenset(needed), wait_s)
        if joined is not None:
            for name, value in joined.items():
                state.add(name, value)
        return joined

    def _forward_all(
        self,
        jobs: list[tuple[model_server_pb2.RequestHeader, route_pb2.RouteStep, list[tensor_pb2.Tensor]]],
        deadline: _Deadline,
        scope: CallScope,
    ) -> Iterator[Delivered]:
        if len(jobs) == 1:
            header, step, tensors = jobs[0]
            yield from self._forwarder.forward(header, step, tensors, deadline.remaining_s(), scope)
            return
        results: queue.Queue[object] = queue.Queue()
        finished = object()

        def run(
            header: model_server_pb2.RequestHeader, step: route_pb2.RouteStep, tensors: list[tensor_pb2.Tensor]
        ) -> None:
            try:
                for item in self._forwarder.forward(header, step, tensors, deadline.remaining_s(), scope):
                    results.put(item)
                results.put(finished)
            except BaseException as exc:
                results.put(exc)

        for job in jobs:
            threading.Thread(target=run, args=job, name="forward", daemon=True).start()
        left = len(jobs)
        try:
            while left:
                remaining = deadline.remaining_s()
                try:
                    item = results.get(timeout=remaining)
                except queue.Empty:
                    raise DeadlineExceeded("request deadline passed while waiting for downstream nodes") from None
                if item is finished:
                    left -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item  # type: ignore[misc]
        except BaseException:
            scope.cancel()  # stop the other branches: the request has failed
            raise

    def _run_step(
        self,
        step: route_pb2.RouteStep,
        to_encode: list[route_pb2.TensorRoute],
        state: _State,
        deadline: _Deadline,
    ) -> model_server_pb2.StepTiming:
        """Runs one partition and encodes the outputs that leave this node; returns its timing."""
        key = key_of(step.partition)
        partition = self._host.get(key)
        names = [s.name for s in partition.inputs]
        missing = [n for n in names if not state.has(n)]
        if missing:
            raise InvalidArgument(f"partition {key} needs inputs {missing}, which this request did not carry")
        start = time.perf_counter()
        for name in names:
            if name not in state.decoded:
                state.decoded[name] = decode_tensor(state.encoded[name], self._limits)
        feeds = {name: state.decoded[name] for name in names}
        decode_ms = (time.perf_counter() - start) * 1e3
        with self._host.compute(key, deadline.remaining_s()) as queue_ms:
            deadline.remaining_s()
            start = time.perf_counter()
            outputs = partition.run(feeds)
            if self._slowdown_factor > 1:
                time.sleep((time.perf_counter() - start) * (self._slowdown_factor - 1))
            compute_ms = (time.perf_counter() - start) * 1e3
        state.decoded.update(outputs)
        start = time.perf_counter()
        for out in to_encode:
            if out.tensor_name not in outputs:
                raise InvalidArgument(f"route for {key} names output {out.tensor_name!r}, which it does not produce")
            state.encoded[out.tensor_name] = encode_tensor(
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
