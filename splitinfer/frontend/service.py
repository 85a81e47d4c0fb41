"""The FrontEndService servicer: plans requests, keeps the plans, and runs their server part for the device.

Thin: it reads and checks the stream, resolves the caller (the token's identity with authentication on,
else the device id) and the server-owned plan the header names, and hands the request to the one
:class:`~splitinfer.frontend.dispatch.Dispatcher` both front doors share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from splitinfer.codecs import DEFAULT_LIMITS, DecodeLimits, TensorAssembler
from splitinfer.errors import InvalidArgument, Unauthenticated
from splitinfer.frontend.dispatch import Dispatcher, Job
from splitinfer.frontend.metrics import FrontEndMetrics, instrument
from splitinfer.frontend.planning import PlanningService
from splitinfer.frontend.plans import PlanBook
from splitinfer.results.keys import check_id, shown
from splitinfer.security.auth import TokenTable
from splitinfer.security.interceptor import identify
from splitinfer.transport.deadline import DEFAULT_MAX_TIMEOUT_S, clamp_timeout_s
from splitinfer.transport.status import set_request_id
from splitinfer.transport.stream import stream_messages
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, tensor_pb2

__all__ = ["FrontEndServicer", "caller_of"]

log = logging.getLogger("splitinfer.frontend")

DOOR = "frontend"
#: Most tensors one Infer request may send.
MAX_TENSORS = 256


def caller_of(tokens: TokenTable | None, context: grpc.ServicerContext, device_id: str) -> str:
    """Who is calling: the authenticated identity's name, or with authentication off the device id it
    claims (then ids are only as good as the network the front-end listens on)."""
    if tokens is None:
        return check_id(device_id, "device_id", required=False)
    identity = identify(tokens, context)
    if identity is None:
        raise Unauthenticated("the front-end needs a bearer token")
    return identity.name


class FrontEndServicer(frontend_pb2_grpc.FrontEndServiceServicer):
    def __init__(
        self,
        planning: PlanningService,
        dispatcher: Dispatcher,
        plans: PlanBook,
        *,
        tokens: TokenTable | None = None,
        metrics: FrontEndMetrics | None = None,
        max_timeout_s: float = DEFAULT_MAX_TIMEOUT_S,
        default_timeout_s: float = 30.0,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        self._planning = planning
        self._dispatcher = dispatcher
        self._plans = plans
        self._tokens = tokens
        self.metrics = metrics or FrontEndMetrics()
        self._max_timeout_s = max_timeout_s
        self._default_timeout_s = default_timeout_s
        self._limits = limits
        instrument(self, self.metrics, DOOR, ("Plan", "Infer"))

    def Plan(self, request: frontend_pb2.PlanRequest, context: grpc.ServicerContext) -> frontend_pb2.PlanResponse:
        self.metrics.requests.labels(DOOR, "Plan").inc()
        if not request.model:
            raise InvalidArgument("PlanRequest needs a model name")
        check_id(request.model, "model")
        device_id = check_id(request.device.device_id, "device_id", required=False)
        caller = caller_of(self._tokens, context, device_id)
        plan = self._planning.plan(request.model, request.device, request.requirements)
        issued = self._plans.issue(plan, caller, device_id)
        return frontend_pb2.PlanResponse(plan=issued.device_share())

    def Infer(
        self, request_iterator: Iterator[frontend_pb2.InferRequest], context: grpc.ServicerContext
    ) -> Iterator[frontend_pb2.InferResponse]:
        self.metrics.requests.labels(DOOR, "Infer").inc()
        start = time.perf_counter()
        header, tensors = self._read(request_iterator)
        request_id = check_id(header.request_id, "request_id")
        set_request_id(request_id)
        device_id = check_id(header.device.device_id, "device_id", required=False)
        caller = caller_of(self._tokens, context, device_id)
        issued = self._plans.get(header.plan_id, caller, device_id)
        timeout_ms = header.timeout_ms or int(self._default_timeout_s * 1e3)
        job = Job(
            caller=caller,
            request_id=request_id,
            issued=issued,
            tensors=tensors,
            timeout_s=clamp_timeout_s(timeout_ms, context.time_remaining(), self._max_timeout_s),
            device_ms=header.device_ms,
            device_steps=header.device_steps,
            device_id=device_id,
        )
        with self.metrics.run_seconds.time():
            outcome = self._dispatcher.run(job)
        if outcome.recalled:
            self.metrics.recalled.inc()
            log.info("request %s answered from the store", shown(request_id))
        server_ms = outcome.server_ms if not outcome.recalled else (time.perf_counter() - start) * 1e3
        trace = frontend_pb2.InferTrace(device_ms=header.device_ms, server_ms=server_ms, steps=outcome.timings)
        yield from stream_messages(frontend_pb2.InferResponse, outcome.outputs)
        yield frontend_pb2.InferResponse(trace=trace)

    def _read(
        self, request_iterator: Iterator[frontend_pb2.InferRequest]
    ) -> tuple[frontend_pb2.InferHeader, dict[str, tensor_pb2.Tensor]]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise InvalidArgument("an Infer stream must start with a header")
        header = first.header
        assembler = TensorAssembler(self._limits)
        tensors: dict[str, tensor_pb2.Tensor] = {}
        for message in request_iterator:
            kind = message.WhichOneof("kind")
            if kind not in ("tensor", "chunk"):
                raise InvalidArgument("an Infer stream carries one header, first, and then only tensors")
            complete = assembler.add(getattr(message, kind))
            if complete is not None:
                if complete.name in tensors or len(tensors) >= MAX_TENSORS:
                    raise InvalidArgument(f"tensor {shown(complete.name)} sent twice, or more than {MAX_TENSORS}")
                tensors[complete.name] = complete
        assembler.finish()
        return header, tensors
