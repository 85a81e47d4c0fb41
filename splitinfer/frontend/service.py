"""The FrontEndService servicer: plans requests, keeps the plans, and runs their server part for the device.

Thin: it reads and checks the stream, resolves the caller (the token's identity with authentication on,
else the device id) and the server-owned plan the header names, and hands the request to the one
:class:`~splitinfer.frontend.dispatch.Dispatcher` both front doors share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from splitinfer import tracing
from splitinfer.codecs import DEFAULT_LIMITS, ChunkAssembler, DecodeLimits, WireTensor
from splitinfer.codecs.dtypes import from_torch
from splitinfer.controller.activity import ActivityWindow
from splitinfer.controller.controller import read_status
from splitinfer.errors import InvalidArgument, NotFound, ResourceExhausted, Unauthenticated
from splitinfer.frontend.dispatch import Dispatcher, Job, Outcome
from splitinfer.frontend.metrics import FrontEndMetrics, instrument
from splitinfer.frontend.planning import PlanningService
from splitinfer.frontend.plans import IssuedPlan, PlanBook
from splitinfer.frontend.serving import in_executor
from splitinfer.program.serde import parse_dtype
from splitinfer.results.keys import check_id, shown
from splitinfer.security.auth import TokenTable
from splitinfer.security.interceptor import identify
from splitinfer.transport.deadline import DEFAULT_MAX_TIMEOUT_S, clamp_timeout_s
from splitinfer.transport.reader import Admission, StreamTimeouts, read_stream
from splitinfer.transport.status import set_request_id
from splitinfer.transport.stream import ONCE_ANSWER_TOO_LARGE, ONCE_MAX_BYTES, stream_messages
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, plan_pb2, tensor_pb2

__all__ = ["FrontEndServicer", "caller_of"]

log = logging.getLogger("splitinfer.frontend")

DOOR = "frontend"
#: Most payload bytes one Infer request may send (all its tensors together).
DEFAULT_MAX_REQUEST_BYTES = 256 << 20


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
    """For ``grpc.aio`` servers. A stream waiting for its header or idling between tensors costs a coroutine
    and is closed at its timeout (``timeouts``); planning runs on the loop's default executor (the serving
    loop's bounded pool); a request runs on the loop (:meth:`Dispatcher.run_async`), its blocking parts on
    that executor."""

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
        timeouts: StreamTimeouts | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        activity: ActivityWindow | None = None,
        pool_root: Path | None = None,
    ) -> None:
        self._planning = planning
        self._dispatcher = dispatcher
        self._plans = plans
        self._tokens = tokens
        self.metrics = metrics or FrontEndMetrics()
        self._max_timeout_s = max_timeout_s
        self._default_timeout_s = default_timeout_s
        self._limits = limits
        self._timeouts = timeouts or StreamTimeouts()
        self._max_request_bytes = max_request_bytes
        #: Requests per device class (what the division controller re-divides by), and where the
        #: controller publishes its status (the pool directory this front-end plans from).
        self.activity = activity or ActivityWindow()
        self._pool_root = pool_root
        self.metrics.watch_activity(self.activity)
        instrument(self, self.metrics, DOOR, ("Plan", "Infer", "InferOnce", "GetFrontEndStatus", "GetModelMetadata"))

    async def Plan(
        self, request: frontend_pb2.PlanRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.PlanResponse:
        self.metrics.requests.labels(DOOR, "Plan").inc()
        if not request.model:
            raise InvalidArgument("PlanRequest needs a model name")
        check_id(request.model, "model")
        device_id = check_id(request.device.device_id, "device_id", required=False)
        caller = caller_of(self._tokens, context, device_id)  # type: ignore[arg-type]
        if request.device_steps:  # before planning: what the device measured may change the plan
            await in_executor(self._dispatcher.learn_device_steps, caller, device_id, list(request.device_steps))
        if request.reports:
            await in_executor(self._dispatcher.learn_reports, caller, device_id, list(request.reports))
        plan = await in_executor(self._planning.plan, request.model, request.device, request.requirements)
        issued = self._plans.issue(plan, caller, device_id)
        if plan.route is None:  # the device will run alone: the servers never see its requests, count it here
            self._record(request.device)
        return frontend_pb2.PlanResponse(plan=issued.device_share())

    def _record(self, device: plan_pb2.DeviceState) -> None:
        self.activity.record(device.device_class, device.compute_flops, device.uplink_mbps)

    async def GetModelMetadata(
        self, request: frontend_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.GetModelMetadataResponse:
        self.metrics.requests.labels(DOOR, "GetModelMetadata").inc()
        check_id(request.model, "model")
        check_id(request.variant, "variant", required=False)
        return await in_executor(self._metadata, request.model, request.variant)

    def _metadata(self, model: str, variant: str) -> frontend_pb2.GetModelMetadataResponse:
        pool = self._planning.pool
        entries = [e for e in pool.variants(model) if e.model == model]
        if not entries:
            raise NotFound(f"model {shown(model)} is not in the pool")
        division = self._planning.division
        chosen = next((e for e in entries if e.variant == variant), None) if variant else entries[0]
        if chosen is None:
            raise NotFound(f"model {shown(model)} has no variant {shown(variant)}")
        if division not in chosen.divisions:
            raise NotFound(f"model {shown(model)}@{chosen.variant} has no division {division!r}")
        manifest = pool.division(chosen.divisions[division])
        response = frontend_pb2.GetModelMetadataResponse(model=model, task=chosen.task)
        for specs, field in ((manifest.inputs, response.inputs), (manifest.outputs, response.outputs)):
            for spec in specs:
                field.add(name=spec.name, dtype=from_torch(parse_dtype(spec.dtype)), shape=list(spec.shape))
        for entry in entries:
            parts = len(pool.division(entry.divisions[division]).partitions) if division in entry.divisions else 0
            response.variants.add(name=entry.variant, accuracy=entry.accuracy,
                                  accuracy_measured=entry.accuracy_measured, partitions=parts)  # fmt: skip
        for profile in self._planning.codecs:
            response.codecs.append(profile.codec.to_proto())
        return response

    async def GetFrontEndStatus(
        self, request: frontend_pb2.GetFrontEndStatusRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.GetFrontEndStatusResponse:
        self.metrics.requests.labels(DOOR, "GetFrontEndStatus").inc()
        response = frontend_pb2.GetFrontEndStatusResponse(window_s=self.activity.window_s, plans_held=len(self._plans))
        for activity in self.activity.snapshot().values():
            response.activity.add(
                device_class=activity.device_class,
                requests=activity.requests,
                requests_per_s=activity.requests_per_s,
                compute_flops=activity.compute_flops,
                uplink_mbps=activity.uplink_mbps,
            )
        published = await in_executor(read_status, self._pool_root) if self._pool_root is not None else None
        if published is not None:
            response.controller_updated_unix_s = published.updated_unix_s
            for m in published.models:
                response.divisions.add(
                    model=m.model, variant=m.variant, version=m.version, changed_unix_s=m.changed_unix_s,
                    reason=m.reason, predicted_gain=m.predicted_gain, basis=m.basis, rollout=m.rollout,
                    last_evaluation=m.last_evaluation,
                )  # fmt: skip
        return response

    def _admit(
        self, header: frontend_pb2.InferHeader, context: grpc.aio.ServicerContext, max_total_bytes: int
    ) -> tuple[str, str, IssuedPlan, Admission]:
        """Before any tensor is buffered: the caller, its plan, and what that plan lets it send."""
        request_id = check_id(header.request_id, "request_id")
        set_request_id(request_id)
        device_id = check_id(header.device.device_id, "device_id", required=False)
        caller = caller_of(self._tokens, context, device_id)  # type: ignore[arg-type]
        issued = self._plans.get(header.plan_id, caller, device_id)
        self._record(header.device)
        wanted = set(issued.entry_tensors)

        def precheck(tensor: tensor_pb2.Tensor) -> None:
            if tensor.name not in wanted:
                raise InvalidArgument(f"tensor {shown(tensor.name)} is not read by the plan; it reads {sorted(wanted)}")

        return caller, device_id, issued, Admission(precheck=precheck, max_total_bytes=max_total_bytes)

    async def _serve(
        self,
        header: frontend_pb2.InferHeader,
        wires: dict[str, WireTensor],
        caller: str,
        device_id: str,
        issued: IssuedPlan,
        context: grpc.aio.ServicerContext,
        start: float,
    ) -> tuple[Outcome, frontend_pb2.InferTrace]:
        """Runs an admitted request (Infer's and InferOnce's): its outcome and its trace."""
        timeout_ms = header.timeout_ms or int(self._default_timeout_s * 1e3)
        job = Job(
            caller=caller,
            request_id=header.request_id,
            issued=issued,
            tensors={name: wire.to_message() for name, wire in wires.items()},
            timeout_s=clamp_timeout_s(timeout_ms, context.time_remaining(), self._max_timeout_s),
            device_ms=header.device_ms,
            device_steps=header.device_steps,
            reports=header.reports,
            device_id=device_id,
            trace_metadata=trace_metadata_of(context),
        )
        with self.metrics.run_seconds.time():
            outcome = await self._dispatcher.run_async(job)
        if outcome.recalled:
            self.metrics.recalled.inc()
            log.info("request %s answered from the store", shown(header.request_id))
        server_ms = outcome.server_ms if not outcome.recalled else (time.perf_counter() - start) * 1e3
        return outcome, frontend_pb2.InferTrace(device_ms=header.device_ms, server_ms=server_ms, steps=outcome.timings)

    async def Infer(
        self, request_iterator: AsyncIterator[frontend_pb2.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[frontend_pb2.InferResponse]:
        self.metrics.requests.labels(DOOR, "Infer").inc()
        start = time.perf_counter()
        resolved: list[tuple[str, str, IssuedPlan]] = []

        def admit(header: frontend_pb2.InferHeader) -> Admission:
            caller, device_id, issued, admission = self._admit(header, context, self._max_request_bytes)
            resolved.append((caller, device_id, issued))
            return admission

        header, wires = await read_stream(request_iterator, self._timeouts, self._limits, admit=admit, what="Infer")
        outcome, trace = await self._serve(header, wires, *resolved[0], context, start)
        for message in stream_messages(frontend_pb2.InferResponse, outcome.outputs):
            yield message
        yield frontend_pb2.InferResponse(trace=trace)

    async def InferOnce(
        self, request: frontend_pb2.InferOnceRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.InferOnceResponse:
        """Infer in one message each way: the same admission (caller, server-owned plan, entry tensors checked
        before any payload is taken, byte budget) and the same request path. An answer over ONCE_MAX_BYTES is
        stored and refused with RESOURCE_EXHAUSTED: Infer under the same request id streams it."""
        self.metrics.requests.labels(DOOR, "InferOnce").inc()
        start = time.perf_counter()
        if not request.HasField("header"):
            raise InvalidArgument("an InferOnce request needs a header")
        budget = min(self._max_request_bytes, ONCE_MAX_BYTES)
        caller, device_id, issued, admission = self._admit(request.header, context, budget)
        assembler = ChunkAssembler(self._limits, precheck=admission.precheck, max_total_bytes=admission.max_total_bytes)
        wires: dict[str, WireTensor] = {}
        for tensor in request.tensors:
            complete = assembler.add(tensor)
            if complete is None:
                raise InvalidArgument(
                    f"InferOnce tensor {shown(tensor.name)} is incomplete (payload shorter than declared); "
                    "stream large tensors with Infer"
                )
            wires[complete.name] = complete
        assembler.finish()
        outcome, trace = await self._serve(request.header, wires, caller, device_id, issued, context, start)
        answer_bytes = sum(len(t.payload) for t in outcome.outputs)
        if answer_bytes > ONCE_MAX_BYTES:  # over what a default gRPC client receives in one message (4 MiB)
            raise ResourceExhausted(
                f"the answer of request {shown(request.header.request_id)} is {answer_bytes} bytes, over the "
                f"{ONCE_MAX_BYTES} of one InferOnce message; it is stored: {ONCE_ANSWER_TOO_LARGE}"
            )
        return frontend_pb2.InferOnceResponse(tensors=outcome.outputs, trace=trace)


def trace_metadata_of(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """The W3C trace-context headers of the call, for the request's span to continue the caller's trace."""
    return tuple(
        (k, v) for k, v in context.invocation_metadata() or () if k in tracing.TRACE_KEYS and isinstance(v, str)
    )
