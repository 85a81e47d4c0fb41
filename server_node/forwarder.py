"""Calls to other nodes and to sinks: replica choice, retries on another replica, cancellation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from server_node.executor import CallScope, Delivered, key_of
from splitinfer.codecs import TensorAssembler
from splitinfer.errors import Unavailable
from splitinfer.routing import ReplicaBalancer
from splitinfer.transport.channel import open_channel
from splitinfer.transport.status import error_from_rpc
from splitinfer.transport.stream import ONCE_MAX_BYTES, stream_messages
from splitinfer.v1 import (
    model_server_pb2,
    model_server_pb2_grpc,
    result_sink_pb2,
    result_sink_pb2_grpc,
    route_pb2,
    tensor_pb2,
)

__all__ = ["GrpcForwarder"]

log = logging.getLogger("splitinfer.server")

#: Failures that mean "this replica could not take the request"; anything else is the request's own fault.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


class GrpcForwarder:
    """Relays requests to the next node's Process, chunks and all, without decoding.

    The replica is chosen by ``balancer``; when a replica refuses the call before answering anything
    (unreachable, overloaded) the next one is tried within the deadline. Calls are registered with the
    request's CallScope so that cancelling the request cancels them.
    """

    def __init__(self, chunk_bytes: int, max_message_bytes: int, balancer: ReplicaBalancer) -> None:
        self._chunk_bytes = chunk_bytes
        self._max_message_bytes = max_message_bytes
        self.balancer = balancer
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = open_channel(address, self._max_message_bytes)
            return channel

    def forward(
        self,
        header: model_server_pb2.RequestHeader,
        step: route_pb2.RouteStep,
        tensors: list[tensor_pb2.Tensor],
        timeout_s: float | None,
        scope: CallScope,
    ) -> Iterator[Delivered]:
        if timeout_s is not None:
            header.timeout_ms = max(1, int(timeout_s * 1e3))
        tried: set[str] = set()
        while True:
            address = self.balancer.choose(list(step.addresses), frozenset(tried), list(step.fallback_addresses))
            tried.add(address)
            answered = False
            try:
                with self.balancer.track(address):
                    for item in self._call(address, header, tensors, timeout_s, scope):
                        answered = True
                        yield item
                self.balancer.succeeded(address)
                return
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code in _RETRYABLE and not answered and not scope.cancelled.is_set():
                    self.balancer.failed(address)
                    if self.balancer.untried(step.addresses, step.fallback_addresses, tried):
                        log.warning(
                            "request %s: %s refused (%s); trying another replica", header.request_id, address, code
                        )
                        continue
                raise error_from_rpc(exc, f"next hop {address} ({key_of(step.partition)})") from None
            except Unavailable:
                raise

    def _call(
        self,
        address: str,
        header: model_server_pb2.RequestHeader,
        tensors: list[tensor_pb2.Tensor],
        timeout_s: float | None,
        scope: CallScope,
    ) -> Iterator[Delivered]:
        stub = model_server_pb2_grpc.ModelServerServiceStub(self._channel(address))
        if sum(t.payload_size_bytes for t in tensors) <= ONCE_MAX_BYTES:
            future = stub.ProcessOnce.future(
                model_server_pb2.ProcessOnceRequest(header=header, tensors=tensors), timeout=timeout_s
            )
            scope.add(future)
            once = future.result()
            yield from once.tensors
            yield from once.done.timings
            return

        def requests() -> Iterator[model_server_pb2.ProcessRequest]:
            yield model_server_pb2.ProcessRequest(header=header)
            yield from stream_messages(model_server_pb2.ProcessRequest, tensors, self._chunk_bytes)

        call = stub.Process(requests(), timeout=timeout_s)
        scope.add(call)
        assembler = TensorAssembler()
        for response in call:
            kind = response.WhichOneof("kind")
            if kind == "done":
                yield from response.done.timings
            elif kind is not None:
                complete = assembler.add(getattr(response, kind))
                if complete is not None:
                    yield complete
        assembler.finish()

    def deliver(
        self,
        sink: str,
        request_id: str,
        tensors: list[tensor_pb2.Tensor],
        timings: list[model_server_pb2.StepTiming],
        timeout_s: float | None,
    ) -> None:
        header = result_sink_pb2.DeliverHeader(request_id=request_id, timings=timings)

        def requests() -> Iterator[result_sink_pb2.DeliverRequest]:
            yield result_sink_pb2.DeliverRequest(header=header)
            yield from stream_messages(result_sink_pb2.DeliverRequest, tensors, self._chunk_bytes)

        try:
            result_sink_pb2_grpc.ResultSinkServiceStub(self._channel(sink)).Deliver(requests(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"sink {sink}") from None

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
