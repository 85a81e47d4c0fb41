"""Clients of the data plane: one node (NodeClient) and a whole route across nodes (RouteClient), and
``AsyncRouteClient`` for ``grpc.aio`` callers (the front-end); :func:`process_call` is the one aio call of
a node's Process/ProcessOnce, used by AsyncRouteClient and by the nodes' forwarder."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc

from splitinfer import tracing
from splitinfer.codecs import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_LIMITS,
    ChunkAssembler,
    DecodeLimits,
    WireTensor,
)
from splitinfer.errors import InvalidArgument
from splitinfer.routing import ReplicaBalancer, downstream_planned_s, entry_steps
from splitinfer.runtime import PartitionKey
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport import frames
from splitinfer.transport.channel import MAX_MESSAGE_BYTES, open_aio_channel, open_channel
from splitinfer.transport.deadline import Deadline
from splitinfer.transport.retry import RetryPolicy, call_replicas, call_replicas_sync
from splitinfer.transport.status import error_from_rpc
from splitinfer.transport.stream import HOP_ONCE_MAX_BYTES, hop_once_max_bytes
from splitinfer.v1 import model_server_pb2, model_server_pb2_grpc, route_pb2, tensor_pb2

__all__ = ["AsyncRouteClient", "NodeClient", "RouteClient", "partition_ref", "process_call"]


def partition_ref(key: PartitionKey) -> route_pb2.PartitionRef:
    return route_pb2.PartitionRef(model=key.model, variant=key.variant, partition=key.partition)


class NodeClient:
    """A connection to one server node."""

    def __init__(
        self,
        address: str,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        once_max_bytes: int = HOP_ONCE_MAX_BYTES,
        security: ClientSecurity | None = None,
    ) -> None:
        self.address = address
        self._once_max_bytes = min(once_max_bytes, hop_once_max_bytes(max_message_bytes))
        self._chunk_bytes = chunk_bytes
        self._channel = open_channel(address, max_message_bytes, security)
        self._stub = model_server_pb2_grpc.ModelServerServiceStub(self._channel)
        # The data plane's two calls, read and written by splitinfer.transport.frames (no protobuf copies).
        self._once = self._channel.unary_unary(
            frames.PROCESS_ONCE_METHOD, request_serializer=None, response_deserializer=frames.parse_once_response
        )
        self._process = self._channel.stream_stream(
            frames.PROCESS_METHOD, request_serializer=None, response_deserializer=frames.parse_process_response
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def process(
        self,
        header: model_server_pb2.RequestHeader,
        tensors: list[tensor_pb2.Tensor],
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> tuple[dict[str, tensor_pb2.Tensor], list[model_server_pb2.StepTiming]]:
        """Runs one request; returns the delivered tensors (still encoded) and the step timings. ``metadata``
        goes with the call (the trace context: ``splitinfer.tracing.inject``).

        Raises the domain error matching the node's status code (InvalidArgument, NotFound, ...).
        """
        wires = [WireTensor.from_message(t) for t in tensors]
        delivered, timings = self.process_wire(header, wires, timeout_s, metadata)
        return {name: tensor.to_message() for name, tensor in delivered.items()}, timings

    def process_wire(
        self,
        header: model_server_pb2.RequestHeader,
        tensors: list[WireTensor],
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> tuple[dict[str, WireTensor], list[model_server_pb2.StepTiming]]:
        """:meth:`process` with tensors kept as :class:`~splitinfer.codecs.WireTensor` both ways (from
        ``encode_wire``; decode what comes back with ``decode_wire``): no payload is copied into or out of a
        protobuf message, each is copied once into the request and read in place from the response."""
        call_metadata = tuple(metadata) or None
        if timeout_s is not None:
            header.timeout_ms = max(1, int(timeout_s * 1e3))
        outputs: dict[str, WireTensor] = {}
        if sum(t.nbytes for t in tensors) <= self._once_max_bytes:
            try:
                once = self._once(frames.once_request(header, tensors), timeout=timeout_s, metadata=call_metadata)
            except grpc.RpcError as exc:
                raise error_from_rpc(exc, f"node {self.address}") from None
            for tensor in once.tensors:
                if tensor.nbytes != tensor.head.payload_size_bytes:
                    raise InvalidArgument(f"node {self.address} answered an incomplete tensor {tensor.name[:100]!r}")
                outputs[tensor.name] = tensor
            return outputs, list(once.done.timings)

        def requests() -> Iterator[bytes]:
            yield frames.header_frame(header)
            yield from frames.stream_frames(tensors, request=True, chunk_bytes=self._chunk_bytes)

        assembler = ChunkAssembler()
        timings: list[model_server_pb2.StepTiming] = []
        try:
            for response in self._process(requests(), timeout=timeout_s, metadata=call_metadata):
                if response.kind == "done":
                    timings.extend(response.value.timings)
                elif response.kind is not None:
                    complete = assembler.add(response.value)
                    if complete is not None:
                        outputs[complete.name] = complete
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"node {self.address}") from None
        assembler.finish()
        return outputs, timings

    def load_partition(
        self, source: str, key: PartitionKey | None = None, manifest_sha256: str = "", timeout_s: float = 60.0
    ) -> model_server_pb2.LoadPartitionResponse:
        request = model_server_pb2.LoadPartitionRequest(source=source, manifest_sha256=manifest_sha256)
        if key is not None:
            request.partition.CopyFrom(partition_ref(key))
        try:
            response: model_server_pb2.LoadPartitionResponse = self._stub.LoadPartition(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"node {self.address}") from None
        return response

    def unload_partition(self, key: PartitionKey, timeout_s: float = 60.0) -> bool:
        """Unloads ``key``; whether the node had it loaded."""
        request = model_server_pb2.UnloadPartitionRequest(partition=partition_ref(key))
        try:
            response: model_server_pb2.UnloadPartitionResponse = self._stub.UnloadPartition(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"node {self.address}") from None
        return bool(response.was_loaded)

    def status(self, timeout_s: float = 10.0) -> model_server_pb2.GetStatusResponse:
        try:
            response: model_server_pb2.GetStatusResponse = self._stub.GetStatus(
                model_server_pb2.GetStatusRequest(), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"node {self.address}") from None
        return response


class RouteClient:
    """Sends requests into a route: each entry step gets the inputs it names, on a replica chosen by load;
    entries run in parallel and what they deliver is merged.

    Replicas are tried by the one retry policy (:mod:`splitinfer.transport.retry`): a refused call
    (unreachable or overloaded replica) or one that does not answer within its attempt budget moves on to
    the next replica; errors of the request itself (InvalidArgument, ...) are never retried.
    """

    def __init__(
        self,
        balancer: ReplicaBalancer | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        security: ClientSecurity | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.balancer = balancer or ReplicaBalancer()
        self.policy = policy or RetryPolicy()
        self._chunk_bytes = chunk_bytes
        self._security = security
        self._lock = threading.Lock()
        self._clients: dict[str, NodeClient] = {}

    def _client(self, address: str) -> NodeClient:
        with self._lock:
            if address not in self._clients:
                self._clients[address] = NodeClient(address, self._chunk_bytes, security=self._security)
            return self._clients[address]

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def _run_entry(
        self,
        route: route_pb2.Route,
        step: int,
        request_id: str,
        tensors: list[tensor_pb2.Tensor],
        deadline: Deadline,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> tuple[dict[str, tensor_pb2.Tensor], list[model_server_pb2.StepTiming]]:
        def attempt(
            address: str, timeout_s: float
        ) -> tuple[dict[str, tensor_pb2.Tensor], list[model_server_pb2.StepTiming]]:
            header = model_server_pb2.RequestHeader(request_id=request_id, route=route, entry_step=step)
            return self._client(address).process(header, tensors, timeout_s, metadata)

        target = route.steps[step]
        return call_replicas_sync(
            self.policy,
            self.balancer,
            list(target.addresses),
            list(target.fallback_addresses),
            deadline,
            downstream_planned_s(route, step),
            attempt,
            f"request {request_id}: entry step {step}",
        )

    def run(
        self,
        route: route_pb2.Route,
        inputs: Mapping[str, tensor_pb2.Tensor],
        *,
        request_id: str = "",
        timeout_s: float = 30.0,
    ) -> tuple[dict[str, tensor_pb2.Tensor], list[model_server_pb2.StepTiming]]:
        """Runs one request; returns the delivered tensors (encoded) and every step's timing."""
        request_id = request_id or uuid.uuid4().hex
        entries = entry_steps(route)
        jobs = []
        for step in entries:
            names = list(route.steps[step].input_names)
            missing = [n for n in names if n not in inputs]
            if missing:
                raise InvalidArgument(f"route step {step} needs inputs {missing}")
            jobs.append((step, [inputs[n] for n in names]))
        deadline = Deadline.after(timeout_s)
        metadata = tracing.inject()  # here, where the caller's span is current (the threads below have none)
        if len(jobs) == 1:
            return self._run_entry(route, jobs[0][0], request_id, jobs[0][1], deadline, metadata)
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [pool.submit(self._run_entry, route, s, request_id, t, deadline, metadata) for s, t in jobs]
            outputs: dict[str, tensor_pb2.Tensor] = {}
            timings: list[model_server_pb2.StepTiming] = []
            for future in futures:
                out, steps = future.result()
                outputs.update(out)
                timings.extend(steps)
        return outputs, timings


async def process_call(
    channel: grpc.aio.Channel,
    header: model_server_pb2.RequestHeader,
    tensors: list[WireTensor],
    timeout_s: float,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    limits: DecodeLimits = DEFAULT_LIMITS,
    once_max_bytes: int = HOP_ONCE_MAX_BYTES,
    metadata: Sequence[tuple[str, str]] = (),
) -> list[WireTensor | model_server_pb2.StepTiming]:
    """One call of a node's ProcessOnce (tensors up to ``once_max_bytes`` together) or Process (chunked from
    each tensor's buffer); returns what it delivered (encoded) and the step timings. Raises
    ``grpc.aio.AioRpcError``; the caller maps it (``error_from_rpc``)."""
    header.timeout_ms = max(1, int(timeout_s * 1e3))
    call_metadata = tuple(metadata) or None
    if sum(t.nbytes for t in tensors) <= once_max_bytes:
        once_call = channel.unary_unary(
            frames.PROCESS_ONCE_METHOD, request_serializer=None, response_deserializer=frames.parse_once_response
        )
        once = await once_call(frames.once_request(header, tensors), timeout=timeout_s, metadata=call_metadata)
        assembler = ChunkAssembler(limits)
        delivered: list[WireTensor | model_server_pb2.StepTiming] = []
        for tensor in once.tensors:
            complete = assembler.add(tensor)
            if complete is None:
                raise InvalidArgument(f"a node answered an incomplete tensor {tensor.name[:100]!r}")
            delivered.append(complete)
        delivered.extend(once.done.timings)
        return delivered

    async def requests() -> AsyncIterator[bytes]:
        yield frames.header_frame(header)
        for message in frames.stream_frames(tensors, request=True, chunk_bytes=chunk_bytes):
            yield message

    process = channel.stream_stream(
        frames.PROCESS_METHOD, request_serializer=None, response_deserializer=frames.parse_process_response
    )
    assembler = ChunkAssembler(limits)
    delivered = []
    async for response in process(requests(), timeout=timeout_s, metadata=call_metadata):
        if response.kind == "done":
            delivered.extend(response.value.timings)
        elif response.kind is not None:
            complete = assembler.add(response.value)
            if complete is not None:
                delivered.append(complete)
    assembler.finish()
    return delivered


class AsyncRouteClient:
    """:class:`RouteClient` for ``grpc.aio`` callers: entries run as concurrent tasks, replicas tried by the
    one retry policy. Create and use it inside one event loop; ``await close()`` at the end."""

    def __init__(
        self,
        balancer: ReplicaBalancer | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        security: ClientSecurity | None = None,
        policy: RetryPolicy | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.balancer = balancer or ReplicaBalancer()
        self.policy = policy or RetryPolicy()
        self._chunk_bytes = chunk_bytes
        self._security = security
        self._max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = open_aio_channel(address, self._max_message_bytes, self._security)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(grace=None)

    async def _run_entry(
        self, route: route_pb2.Route, step: int, request_id: str, tensors: list[WireTensor], deadline: Deadline
    ) -> list[WireTensor | model_server_pb2.StepTiming]:
        async def attempt(address: str, timeout_s: float) -> list[WireTensor | model_server_pb2.StepTiming]:
            header = model_server_pb2.RequestHeader(request_id=request_id, route=route, entry_step=step)
            try:
                return await process_call(
                    self._channel(address), header, tensors, timeout_s, chunk_bytes=self._chunk_bytes,
                    once_max_bytes=hop_once_max_bytes(self._max_message_bytes), metadata=tracing.inject(),
                )  # fmt: skip
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc(exc, f"node {address}") from None

        target = route.steps[step]
        return await call_replicas(
            self.policy, self.balancer, target.addresses, target.fallback_addresses, deadline,
            downstream_planned_s(route, step), attempt, f"request {request_id}: entry step {step}",
        )  # fmt: skip

    async def run(
        self,
        route: route_pb2.Route,
        inputs: Mapping[str, tensor_pb2.Tensor | WireTensor],
        *,
        request_id: str = "",
        timeout_s: float = 30.0,
    ) -> tuple[dict[str, WireTensor], list[model_server_pb2.StepTiming]]:
        """Runs one request; returns the delivered tensors (encoded, as WireTensors) and every step's timing."""
        request_id = request_id or uuid.uuid4().hex
        wires = {n: t if isinstance(t, WireTensor) else WireTensor.from_message(t) for n, t in inputs.items()}
        jobs = []
        deadline = Deadline.after(timeout_s)
        for step in entry_steps(route):
            names = list(route.steps[step].input_names)
            missing = [n for n in names if n not in wires]
            if missing:
                raise InvalidArgument(f"route step {step} needs inputs {missing}")
            jobs.append(self._run_entry(route, step, request_id, [wires[n] for n in names], deadline))
        tasks = [asyncio.ensure_future(job) for job in jobs]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        outputs: dict[str, WireTensor] = {}
        timings: list[model_server_pb2.StepTiming] = []
        for items in results:
            for item in items:
                if isinstance(item, WireTensor):
                    outputs[item.name] = item
                else:
                    timings.append(item)
        return outputs, timings
