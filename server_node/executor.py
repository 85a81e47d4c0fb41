"""What a node does with one request: run its steps of the route, forward, join, deliver.

Transport-free and asynchronous: the servicer hands in the header, the tensors received (still encoded, as
:class:`~splitinfer.codecs.WireTensor`), the request's :class:`~splitinfer.transport.deadline.Deadline`, and
a :class:`Forwarder` that calls other nodes (and the sink). Partitions run on the node's
:class:`~server_node.compute.ComputePool`; nothing here blocks the event loop. Outputs are encoded once with
the codec their route names and the same encoded bytes go to every consumer (fan-out without re-encoding);
tensors that came in encoded and only travel on are relayed from the buffer they arrived in. Forwards to
several nodes run as concurrent tasks; when one fails, the others are cancelled.

The deadline is checked before decoding, after compute (by the pool) and before forwarding or delivering.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from server_node.compute import ComputePool
from server_node.host import PartitionHost
from server_node.joins import JoinTable
from splitinfer.codecs import CodecSpec, DecodeLimits, WireTensor, decode_wire, encode_wire
from splitinfer.codecs.wire import decodes_in_place, is_plain_encoding
from splitinfer.errors import InvalidArgument
from splitinfer.routing import downstream_planned_s
from splitinfer.runtime import LoadedPartition, PartitionKey
from splitinfer.transport.deadline import Deadline
from splitinfer.v1 import model_server_pb2, route_pb2

__all__ = ["Delivered", "Forwarder", "RequestExecutor", "key_of"]

Delivered = WireTensor | model_server_pb2.StepTiming

#: Tensors at least this large are decoded and encoded on a codec thread, not on the event loop, when a codec
#: step (compression, quantisation) has work to do.
OFFLOAD_BYTES = 64 << 10
#: Without a codec step, encoding is a view of the tensor's bytes (always on the loop) and decoding either a
#: view of the received bytes (a reader of its inputs, always on the loop) or one copy into a buffer of its
#: own (a writer): that copy on the loop up to this size (about 0.2 ms per MiB here, less than the two thread
#: hand-offs an offload costs), on a codec thread beyond it.
OFFLOAD_PLAIN_BYTES = 4 << 20
#: A partition whose mean compute time is below this (after INLINE_MIN_RUNS runs) runs on the event loop when
#: no run is queued: handing it to a compute thread and back costs about 0.2 ms here (a 4 KiB copy
#: partition's hop 1.32 -> 1.13 ms), more than it computes, and the loop is held for less than this.
INLINE_COMPUTE_MS = 0.2
INLINE_MIN_RUNS = 8


class Forwarder(Protocol):
    """Sends a request on to the node of a step (replicas, retries) and to sinks."""

    async def forward(
        self,
        header: model_server_pb2.RequestHeader,
        step: route_pb2.RouteStep,
        tensors: list[WireTensor],
        deadline: Deadline,
        planned_s: float | None,
    ) -> list[Delivered]: ...

    async def deliver(
        self,
        sink: str,
        request_id: str,
        tensors: list[WireTensor],
        timings: list[model_server_pb2.StepTiming],
        deadline: Deadline,
    ) -> None: ...


def _tiny(partition: LoadedPartition) -> bool:
    """Whether a partition is measured (over ``INLINE_MIN_RUNS`` runs) to take under ``INLINE_COMPUTE_MS``."""
    return partition.completed >= INLINE_MIN_RUNS and partition.mean_compute_ms < INLINE_COMPUTE_MS


_NO_CODEC = CodecSpec()


def key_of(ref: route_pb2.PartitionRef) -> PartitionKey:
    return PartitionKey(ref.model, ref.variant, ref.partition)


def _is_join(steps: Sequence[route_pb2.RouteStep], index: int) -> bool:
    """Whether the route feeds step ``index`` from two or more sources (steps, or the caller plus a step)."""
    route_steps = list(steps)
    producers = {j for j, s in enumerate(route_steps) for out in s.outputs if index in out.consumer_steps}
    produced = {out.tensor_name for j in producers for out in route_steps[j].outputs}
    from_caller = any(name not in produced for name in route_steps[index].input_names)
    return len(producers) + int(from_caller) >= 2


@dataclass
class _State:
    """Tensors of one request on this node, encoded (as received or sent) and decoded (as computed)."""

    encoded: dict[str, WireTensor]
    decoded: dict[str, torch.Tensor] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.encoded or name in self.decoded

    def value(self, name: str) -> object:
        return self.decoded[name] if name in self.decoded else self.encoded[name]

    def add(self, name: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            self.decoded.setdefault(name, value)
        else:
            assert isinstance(value, WireTensor)
            self.encoded.setdefault(name, value)


class RequestExecutor:
    """Runs the steps of one request that belong to this node."""

    def __init__(
        self,
        host: PartitionHost,
        address: str,
        forwarder: Forwarder,
        pool: ComputePool,
        limits: DecodeLimits,
        *,
        join_timeout_s: float = 30.0,
    ) -> None:
        self._host = host
        self._address = address
        self._forwarder = forwarder
        self._pool = pool
        self._limits = limits
        self._join_timeout_s = join_timeout_s
        self.joins = JoinTable()
        self._default_routes: weakref.WeakKeyDictionary[LoadedPartition, tuple[route_pb2.TensorRoute, ...]] = (
            weakref.WeakKeyDictionary()
        )

    def is_local(self, step: route_pb2.RouteStep) -> bool:
        """Whether this node runs ``step`` when it has its inputs."""
        return not step.addresses or self._address in step.addresses

    def may_enter(self, step: route_pb2.RouteStep) -> bool:
        """Whether a caller may send ``step`` here (as a replica or a fallback)."""
        return self.is_local(step) or self._address in step.fallback_addresses

    def alone(
        self, header: model_server_pb2.RequestHeader, received: dict[str, WireTensor]
    ) -> tuple[route_pb2.RouteStep, LoadedPartition] | None:
        """The entry step and its partition when the request is that one step alone: no sink, none of its
        outputs feeds another step, and every input the partition reads came with the request (so no join).
        :meth:`run_alone` runs such a request; anything else (None) goes through :meth:`execute`. The route
        must have been validated (``server_node.checks.validate_route``)."""
        route = header.route
        if route.sink:
            return None
        step = route.steps[header.entry_step]
        for out in step.outputs:
            if out.consumer_steps:
                return None
        partition = self._host.get(key_of(step.partition))
        for spec in partition.inputs:
            if spec.name not in received:
                return None
        return step, partition

    async def run_alone(
        self,
        step: route_pb2.RouteStep,
        partition: LoadedPartition,
        received: dict[str, WireTensor],
        deadline: Deadline,
    ) -> tuple[list[WireTensor], model_server_pb2.StepTiming]:
        """What :meth:`execute` yields for a request that :meth:`alone` accepted (the outputs delivered, in
        route order, and the step's timing), without its generator, state and forwarding machinery: the
        same :meth:`_run_step` with the same checks, for the common single-step ProcessOnce."""
        routes = step.outputs or self._deliver_all(partition)
        to_encode = [out for out in routes if out.deliver]
        state = _State(dict(received))
        timing = await self._run_step(step, partition, to_encode, state, deadline)
        encoded = state.encoded
        return [encoded[out.tensor_name] for out in to_encode], timing

    async def execute(
        self, header: model_server_pb2.RequestHeader, received: dict[str, WireTensor], deadline: Deadline
    ) -> AsyncIterator[Delivered]:
        """Yields delivered tensors (encoded) and step timings, in the order they become available.

        The route must have been validated (``server_node.checks.validate_route``). With a sink in the route,
        delivered tensors go to the sink instead (with this node's timings) and only timings are yielded.
        """
        steps = header.route.steps
        sink = header.route.sink
        state = _State(dict(received))
        pending = [header.entry_step]
        remote: dict[int, None] = {}
        launched: dict[int, asyncio.Task[list[Delivered]]] = {}
        done: set[int] = set()
        to_sink: list[WireTensor] = []
        timings: list[model_server_pb2.StepTiming] = []

        def launch(consumer: int) -> None:
            step = steps[consumer]
            carried = [n for n in step.input_names if n in state.encoded]
            if not carried:
                raise InvalidArgument(f"route step {consumer} needs {list(step.input_names)}; this node has none")
            deadline.check("before forwarding")
            forward_header = model_server_pb2.RequestHeader()
            forward_header.CopyFrom(header)
            forward_header.entry_step = consumer
            planned = downstream_planned_s(header.route, consumer)
            tensors = [state.encoded[n] for n in carried]
            launched[consumer] = asyncio.ensure_future(
                self._forwarder.forward(forward_header, step, tensors, deadline, planned)
            )

        def launch_ready() -> None:
            """Starts the forwards whose inputs no step still to run here will produce: a local join may be
            waiting for what they bring back."""
            later = _future_outputs(steps, pending, done, self.is_local)
            for consumer in remote:
                if consumer not in launched and not any(n in later for n in steps[consumer].input_names):
                    launch(consumer)

        try:
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
                            f"partition {key_of(step.partition)} needs inputs {missing}, "
                            "which this request did not carry"
                        )
                    launch_ready()
                    joined = await self._join(header.request_id, index, needed, state, deadline)
                    if joined is None:
                        continue  # another call completed the join and runs this step
                routes = step.outputs or self._deliver_all(partition)
                local: list[int] = []
                to_encode: list[route_pb2.TensorRoute] = []
                for out in routes:
                    here = [c for c in out.consumer_steps if self.is_local(steps[c])]
                    local.extend(here)
                    remote.update((c, None) for c in out.consumer_steps if c not in here)
                    if out.deliver or len(here) < len(out.consumer_steps):
                        to_encode.append(out)
                timing = await self._run_step(step, partition, to_encode, state, deadline)
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
            for consumer in remote:
                if consumer not in launched:
                    launch(consumer)
            jobs: list[Coroutine[Any, Any, list[Delivered]]] = []
            if to_sink:
                deadline.check("before delivering to the sink")
                jobs.append(self._deliver(sink, header.request_id, to_sink, timings, deadline))
            if jobs or launched:
                for item in await _all([*launched.values(), *jobs]):
                    yield item
        finally:
            for task in launched.values():
                if not task.done():
                    task.cancel()

    async def _deliver(
        self,
        sink: str,
        request_id: str,
        tensors: list[WireTensor],
        timings: list[model_server_pb2.StepTiming],
        deadline: Deadline,
    ) -> list[Delivered]:
        await self._forwarder.deliver(sink, request_id, tensors, timings, deadline)
        return []

    async def _join(
        self, request_id: str, index: int, needed: list[str], state: _State, deadline: Deadline
    ) -> dict[str, object] | None:
        have = {n: state.value(n) for n in needed if state.has(n)}
        wait_s = min(self._join_timeout_s, deadline.check("before a join"))
        joined = await self.joins.deposit((request_id, index), have, frozenset(needed), wait_s)
        if joined is not None:
            for name, value in joined.items():
                state.add(name, value)
        return joined

    async def _decode(self, tensor: WireTensor, share: bool) -> torch.Tensor:
        """``share``: the reader never writes the tensor, so it may be the received bytes (decode_wire)."""
        plain = is_plain_encoding(tensor.head.encoding)
        threshold = OFFLOAD_PLAIN_BYTES if plain else OFFLOAD_BYTES
        if tensor.nbytes >= threshold and not (plain and decodes_in_place(tensor.head, tensor.payload, share)):
            return await self._pool.offload(functools.partial(decode_wire, share=share), tensor.head, tensor.payload,
                                            self._limits)  # fmt: skip
        return decode_wire(tensor.head, tensor.payload, self._limits, share=share)

    async def _encode(self, value: torch.Tensor, name: str, codec: CodecSpec) -> WireTensor:
        """Plain encoding of a contiguous CPU tensor is a view of its bytes, whatever its size: on the loop."""
        plain = codec.is_plain and value.is_contiguous() and value.device.type == "cpu"
        if not plain and value.numel() * value.element_size() >= OFFLOAD_BYTES:
            return await self._pool.offload(encode_wire, value, name, codec)
        return encode_wire(value, name, codec)

    def _deliver_all(self, partition: LoadedPartition) -> tuple[route_pb2.TensorRoute, ...]:
        """The routes of a step that names no outputs: deliver every output (built once per partition)."""
        routes = self._default_routes.get(partition)
        if routes is None:
            routes = tuple(route_pb2.TensorRoute(tensor_name=spec.name, deliver=True) for spec in partition.outputs)
            self._default_routes[partition] = routes
        return routes

    async def _run_step(
        self,
        step: route_pb2.RouteStep,
        partition: LoadedPartition,
        to_encode: list[route_pb2.TensorRoute],
        state: _State,
        deadline: Deadline,
    ) -> model_server_pb2.StepTiming:
        """Runs one partition and encodes the outputs that leave this node; returns its timing."""
        names = [s.name for s in partition.inputs]
        missing = [n for n in names if not state.has(n)]
        if missing:
            raise InvalidArgument(f"partition {partition.key} needs inputs {missing}, which this request did not carry")
        deadline.check("before decoding the inputs of %s", partition.key)
        start = time.perf_counter()
        decoded = state.decoded
        # A partition that may write its inputs (or return them) gets a private copy of every input (the bytes
        # they came in are relayed or read by other steps, a computed value may be read by others or be a view
        # of received bytes, or come from another call through a join); one that only reads them may use the
        # received bytes in place, and its decodes serve later steps too.
        private = not partition.inputs_read_only
        feeds: dict[str, torch.Tensor] = {}
        for name in names:
            if private:
                known = decoded.get(name)
                feeds[name] = known.clone() if known is not None else await self._decode(state.encoded[name], False)
            else:
                if name not in decoded:
                    decoded[name] = await self._decode(state.encoded[name], True)
                feeds[name] = decoded[name]
        decode_ms = (time.perf_counter() - start) * 1e3
        ran = self._pool.run_here(partition, feeds, deadline) if _tiny(partition) else None
        outputs, run = ran if ran is not None else await self._pool.run(partition, feeds, deadline)
        decoded.update(outputs)
        start = time.perf_counter()
        for out in to_encode:
            name = out.tensor_name
            if name not in outputs:
                raise InvalidArgument(f"route for {partition.key} names output {name!r}, which it does not produce")
            codec = CodecSpec.from_proto(out.encoding) if out.HasField("encoding") else _NO_CODEC
            state.encoded[name] = await self._encode(outputs[name], name, codec)
        return model_server_pb2.StepTiming(
            node=self._address,
            partition=step.partition,
            queue_ms=run.queue_ms,
            compute_ms=run.compute_ms,
            decode_ms=decode_ms,
            encode_ms=(time.perf_counter() - start) * 1e3,
        )


def _future_outputs(
    steps: Sequence[route_pb2.RouteStep],
    pending: list[int],
    done: set[int],
    is_local: Callable[[route_pb2.RouteStep], bool],
) -> set[str]:
    """Names of the tensors that steps still to run on this node (pending, and the local steps they feed) produce."""
    names: set[str] = set()
    seen: set[int] = set()
    stack = list(pending)
    while stack:
        index = stack.pop()
        if index in seen or index in done:
            continue
        seen.add(index)
        for out in steps[index].outputs:
            names.add(out.tensor_name)
            stack.extend(c for c in out.consumer_steps if is_local(steps[c]))
    return names


async def _all(
    jobs: Sequence[Coroutine[Any, Any, list[Delivered]] | asyncio.Future[list[Delivered]]],
) -> list[Delivered]:
    """Runs the coroutines as tasks; their results in order. The first failure cancels the others."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return [item for result in results for item in result]
