"""A thin client of the FrontEndService: plan, then send tensors and read the outputs back.

For applications that run no partition themselves (cameras, scripts, tests, the examples); the edge agent
(``edge_agent``) is the client for devices that run heads and tails.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import grpc
import torch

from splitinfer.codecs import CodecSpec, TensorAssembler, decode_tensor, encode_tensor
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.channel import open_channel
from splitinfer.transport.status import error_from_rpc
from splitinfer.transport.stream import ONCE_ANSWER_TOO_LARGE, ONCE_MAX_BYTES, stream_messages
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, plan_pb2, tensor_pb2

__all__ = ["FrontEndClient"]


class FrontEndClient:
    def __init__(self, address: str, security: ClientSecurity | None = None) -> None:
        self.address = address
        self._channel = open_channel(address, security=security)
        self._stub = frontend_pb2_grpc.FrontEndServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FrontEndClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def plan(
        self,
        model: str,
        device: plan_pb2.DeviceState,
        requirements: plan_pb2.Requirements | None = None,
        timeout_s: float = 30.0,
    ) -> plan_pb2.ExecutionPlan:
        request = frontend_pb2.PlanRequest(model=model, device=device, requirements=requirements)
        try:
            return self._stub.Plan(request, timeout=timeout_s).plan
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"front-end {self.address}") from None

    def infer(
        self,
        plan: plan_pb2.ExecutionPlan,
        device: plan_pb2.DeviceState,
        inputs: Mapping[str, torch.Tensor],
        *,
        request_id: str = "",
        timeout_s: float = 30.0,
    ) -> tuple[dict[str, torch.Tensor], frontend_pb2.InferTrace]:
        """Runs the server part of ``plan`` (from :meth:`plan`: the front-end keeps it, this names its id) on
        ``inputs`` (plain tensors, the plan's entry tensors), each encoded with the plan's codec for it;
        returns the outputs and the trace. An expired plan raises FailedPrecondition: plan again. Inputs of up to
        2 MiB together go in one InferOnce call, larger ones stream through Infer."""
        header = frontend_pb2.InferHeader(
            request_id=request_id or uuid.uuid4().hex,
            device=device,
            plan_id=plan.plan_id,
            timeout_ms=int(timeout_s * 1e3),
        )
        codecs = {c.tensor_name: c.encoding for c in plan.crossings}
        tensors = [_encode(t, name, codecs.get(name)) for name, t in inputs.items()]
        if sum(len(t.payload) for t in tensors) <= ONCE_MAX_BYTES:  # one message each way
            request = frontend_pb2.InferOnceRequest(header=header, tensors=tensors)
            try:
                answer = self._stub.InferOnce(request, timeout=timeout_s)
                return {t.name: decode_tensor(t) for t in answer.tensors}, answer.trace
            except grpc.RpcError as exc:
                too_large = ONCE_ANSWER_TOO_LARGE in (exc.details() or "")  # stored: the stream below delivers it
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or not too_large:
                    raise error_from_rpc(exc, f"front-end {self.address}") from None
        requests = [frontend_pb2.InferRequest(header=header), *stream_messages(frontend_pb2.InferRequest, tensors)]
        assembler, outputs, trace = TensorAssembler(), {}, frontend_pb2.InferTrace()
        try:
            for response in self._stub.Infer(iter(requests), timeout=timeout_s):
                kind = response.WhichOneof("kind")
                if kind == "trace":
                    trace = response.trace
                elif kind in ("tensor", "chunk") and (done := assembler.add(getattr(response, kind))) is not None:
                    outputs[done.name] = decode_tensor(done)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"front-end {self.address}") from None
        return outputs, trace


def _encode(tensor: torch.Tensor, name: str, encoding: tensor_pb2.Encoding | None) -> tensor_pb2.Tensor:
    if encoding is None:
        return encode_tensor(tensor, name)
    return encode_tensor(tensor, name, CodecSpec.from_proto(encoding))
