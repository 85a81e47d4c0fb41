"""The device side of a split: run a head locally and the rest of the model on a server node."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from splitinfer.codecs import CodecSpec, decode_wire, encode_wire
from splitinfer.program import CompiledProgram, Program
from splitinfer.runtime import PartitionKey
from splitinfer.transport.clients import NodeClient, RouteClient, partition_ref
from splitinfer.v1 import model_server_pb2, route_pb2

__all__ = ["NodeClient", "RouteClient", "SplitResult", "SplitRunner", "partition_ref"]

_NO_CODEC = CodecSpec()


@dataclass(frozen=True)
class SplitResult:
    """Outputs of a split run and where its time and bytes went."""

    outputs: dict[str, torch.Tensor]
    codec: CodecSpec
    bytes_sent: int
    bytes_received: int
    head_ms: float
    encode_ms: float
    remote_ms: float
    total_ms: float
    timings: list[model_server_pb2.StepTiming] = field(default_factory=list)


class SplitRunner:
    """Runs a head program on this device and the rest of the model on a server node.

    ``tail`` names the partition the node hosts; the head's outputs are its inputs.
    """

    def __init__(self, head: Program, tail: PartitionKey, tail_outputs: list[str], client: NodeClient) -> None:
        self._head = CompiledProgram(head)
        self._head_outputs = head.output_names
        self._tail = tail
        self._tail_outputs = tail_outputs
        self._client = client

    def _route(self, codec: CodecSpec) -> route_pb2.Route:
        step = route_pb2.RouteStep(
            partition=partition_ref(self._tail),
            addresses=[self._client.address],
            input_names=self._head_outputs,
            outputs=[route_pb2.TensorRoute(tensor_name=name, deliver=True) for name in self._tail_outputs],
        )
        return route_pb2.Route(steps=[step])

    def infer(
        self,
        inputs: Mapping[str, torch.Tensor],
        codec: CodecSpec = _NO_CODEC,
        timeout_s: float | None = 30.0,
    ) -> SplitResult:
        start = time.perf_counter()
        head_out = self._head(inputs)
        head_done = time.perf_counter()
        messages = [encode_wire(head_out[name], name, codec) for name in self._head_outputs]
        encoded = time.perf_counter()
        header = model_server_pb2.RequestHeader(request_id=uuid.uuid4().hex, route=self._route(codec))
        delivered, timings = self._client.process_wire(header, messages, timeout_s)  # no protobuf copies
        remote_done = time.perf_counter()
        outputs = {name: decode_wire(tensor.head, tensor.payload) for name, tensor in delivered.items()}
        end = time.perf_counter()
        return SplitResult(
            outputs=outputs,
            codec=codec,
            bytes_sent=sum(m.nbytes for m in messages),
            bytes_received=sum(t.nbytes for t in delivered.values()),
            head_ms=(head_done - start) * 1e3,
            encode_ms=(encoded - head_done) * 1e3,
            remote_ms=(remote_done - encoded) * 1e3,
            total_ms=(end - start) * 1e3,
            timings=timings,
        )
