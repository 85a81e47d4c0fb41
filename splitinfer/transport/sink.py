"""A ResultSinkService that collects deliveries per request, for the front-end and for clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from splitinfer.codecs import TensorAssembler
from splitinfer.errors import DeadlineExceeded, InvalidArgument, SplitInferError
from splitinfer.transport.status import abort
from splitinfer.v1 import model_server_pb2, result_sink_pb2, result_sink_pb2_grpc, tensor_pb2

__all__ = ["Mailbox", "ResultSink"]


@dataclass
class Mailbox:
    """What has arrived for one request."""

    expected: frozenset[str]
    tensors: dict[str, tensor_pb2.Tensor] = field(default_factory=dict)
    timings: list[model_server_pb2.StepTiming] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, timeout_s: float) -> dict[str, tensor_pb2.Tensor]:
        """The expected tensors once all have arrived; DeadlineExceeded naming what is missing otherwise."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not self.expected <= self.tensors.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(self.expected - self.tensors.keys())
                    raise DeadlineExceeded(f"outputs {missing} were not delivered within {timeout_s:.1f}s")
                self.cond.wait(left)
            return dict(self.tensors)


class ResultSink(result_sink_pb2_grpc.ResultSinkServiceServicer):
    """Register a request with :meth:`expect` before sending it; read its outputs from the mailbox."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boxes: dict[str, Mailbox] = {}

    def expect(self, request_id: str, names: set[str] | frozenset[str]) -> Mailbox:
        box = Mailbox(frozenset(names))
        with self._lock:
            self._boxes[request_id] = box
        return box

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._boxes.pop(request_id, None)

    def Deliver(
        self, request_iterator: Iterator[result_sink_pb2.DeliverRequest], context: grpc.ServicerContext
    ) -> result_sink_pb2.DeliverResponse:
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "header":
                raise InvalidArgument("a Deliver stream must start with a header")
            with self._lock:
                box = self._boxes.get(first.header.request_id)
            assembler = TensorAssembler()
            arrived = []
            for message in request_iterator:
                kind = message.WhichOneof("kind")
                if kind not in ("tensor", "chunk"):
                    raise InvalidArgument("a Deliver stream carries one header, then only tensors")
                complete = assembler.add(getattr(message, kind))
                if complete is not None:
                    arrived.append(complete)
            assembler.finish()
        except SplitInferError as exc:
            abort(context, exc)
        if box is None:
            return result_sink_pb2.DeliverResponse(accepted=False)
        with box.cond:
            box.tensors.update((t.name, t) for t in arrived)
            box.timings.extend(first.header.timings)
            box.cond.notify_all()
        return result_sink_pb2.DeliverResponse(accepted=True)
