"""Calls to other nodes and to sinks, on ``grpc.aio``: replica choice and retries by the one policy
(:mod:`splitinfer.transport.retry`), payloads relayed from the buffers they arrived in.

A forwarded call whose tensors add up to at most ``hop_once_max_bytes`` (16 MiB, less on a node with a smaller
``max_message_bytes``) goes as one ``ProcessOnce``; larger ones stream through ``Process``, each tensor cut
into chunks straight from its buffer. Every attempt carries its
budget as its gRPC timeout and in its header, so a hung replica is abandoned for the next one and its late
answer discarded. When the request is cancelled (its caller went away, or a sibling branch failed), the
task awaiting the call is cancelled, which cancels the call downstream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from server_node.executor import Delivered, key_of
from splitinfer import tracing
from splitinfer.codecs import DecodeLimits, WireTensor
from splitinfer.routing import ReplicaBalancer
from splitinfer.transport.channel import open_aio_channel
from splitinfer.transport.clients import process_call
from splitinfer.transport.deadline import Deadline
from splitinfer.transport.retry import RetryPolicy, call_replicas
from splitinfer.transport.status import error_from_rpc
from splitinfer.transport.stream import hop_once_max_bytes, stream_wire
from splitinfer.v1 import (
    model_server_pb2,
    result_sink_pb2,
    result_sink_pb2_grpc,
    route_pb2,
)

__all__ = ["GrpcForwarder"]

log = logging.getLogger("splitinfer.server")


class GrpcForwarder:
    """Relays requests to the next node's Process, chunks and all, without decoding. Use from the node's
    event loop only."""

    def __init__(
        self,
        chunk_bytes: int,
        max_message_bytes: int,
        balancer: ReplicaBalancer,
        policy: RetryPolicy,
        limits: DecodeLimits,
    ) -> None:
        self._chunk_bytes = chunk_bytes
        self._max_message_bytes = max_message_bytes
        self.balancer = balancer
        self.policy = policy
        self._limits = limits
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_aio_channel(address, self._max_message_bytes)
        return channel

    async def forward(
        self,
        header: model_server_pb2.RequestHeader,
        step: route_pb2.RouteStep,
        tensors: list[WireTensor],
        deadline: Deadline,
        planned_s: float | None,
    ) -> list[Delivered]:
        what = f"request {header.request_id}: step {header.entry_step} ({key_of(step.partition)})"

        async def attempt(address: str, timeout_s: float) -> list[Delivered]:
            try:
                return await process_call(
                    self._channel(address),
                    header,
                    tensors,
                    timeout_s,
                    chunk_bytes=self._chunk_bytes,
                    limits=self._limits,
                    once_max_bytes=hop_once_max_bytes(self._max_message_bytes),
                    metadata=tracing.inject(),  # the next hop's span is a child of this node's
                )
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc(exc, f"next hop {address} ({key_of(step.partition)})") from None

        return await call_replicas(
            self.policy, self.balancer, step.addresses, step.fallback_addresses, deadline, planned_s, attempt, what
        )

    async def deliver(
        self,
        sink: str,
        request_id: str,
        tensors: list[WireTensor],
        timings: list[model_server_pb2.StepTiming],
        deadline: Deadline,
    ) -> None:
        header = result_sink_pb2.DeliverHeader(request_id=request_id, timings=timings)

        async def requests() -> AsyncIterator[result_sink_pb2.DeliverRequest]:
            yield result_sink_pb2.DeliverRequest(header=header)
            for message in stream_wire(result_sink_pb2.DeliverRequest, tensors, self._chunk_bytes):
                yield message

        stub = result_sink_pb2_grpc.ResultSinkServiceStub(self._channel(sink))
        try:
            await stub.Deliver(requests(), timeout=deadline.check("before delivering"))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"sink {sink}") from None

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(grace=None)
