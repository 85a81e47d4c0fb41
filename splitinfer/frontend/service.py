"""The FrontEndService servicer: plans requests and dispatches their server part on the device's behalf."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from splitinfer.codecs import DEFAULT_LIMITS, DecodeLimits, TensorAssembler
from splitinfer.errors import FailedPrecondition, InvalidArgument, SplitInferError
from splitinfer.frontend.planning import PlanningService
from splitinfer.planner.plan import Plan
from splitinfer.results.client import Results, stored_result
from splitinfer.transport.clients import RouteClient
from splitinfer.transport.status import abort
from splitinfer.transport.stream import stream_messages
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, result_store_pb2, tensor_pb2

__all__ = ["FrontEndServicer"]

log = logging.getLogger("splitinfer.frontend")


class FrontEndServicer(frontend_pb2_grpc.FrontEndServiceServicer):
    def __init__(
        self,
        planning: PlanningService,
        results: Results | None = None,
        routes: RouteClient | None = None,
        *,
        default_timeout_s: float = 30.0,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        self._planning = planning
        self._results = results
        self._routes = routes or RouteClient()
        self._default_timeout_s = default_timeout_s
        self._limits = limits

    def Plan(self, request: frontend_pb2.PlanRequest, context: grpc.ServicerContext) -> frontend_pb2.PlanResponse:
        try:
            if not request.model:
                raise InvalidArgument("PlanRequest needs a model name")
            plan = self._planning.plan(request.model, request.device, request.requirements)
        except SplitInferError as exc:
            abort(context, exc)
        return frontend_pb2.PlanResponse(plan=plan.to_proto())

    def Infer(
        self, request_iterator: Iterator[frontend_pb2.InferRequest], context: grpc.ServicerContext
    ) -> Iterator[frontend_pb2.InferResponse]:
        request_id = "?"
        try:
            header, tensors = self._read(request_iterator)
            request_id = header.request_id
            start = time.perf_counter()
            stored = stored_result(self._results, request_id)
            if stored is not None:  # a retry: answer from the store, do not run it twice
                # A retry may come with a new plan (a node died, conditions changed); it is the same request
                # as long as it asks the same model.
                if stored.model != header.plan.model:
                    raise FailedPrecondition(
                        f"request id {request_id!r} was already used for model {stored.model!r}; "
                        "use a new id for a new request"
                    )
                outputs, trace = list(stored.outputs), frontend_pb2.InferTrace(device_ms=header.device_ms)
            else:
                outputs, trace = self._run(header, tensors, context, start)
            yield from stream_messages(frontend_pb2.InferResponse, outputs)
            yield frontend_pb2.InferResponse(trace=trace)
        except SplitInferError as exc:
            log.info("request %s refused: %s", request_id, exc)
            abort(context, exc)

    def _read(
        self, request_iterator: Iterator[frontend_pb2.InferRequest]
    ) -> tuple[frontend_pb2.InferHeader, dict[str, tensor_pb2.Tensor]]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise InvalidArgument("an Infer stream must start with a header")
        header = first.header
        if not header.request_id:
            raise InvalidArgument("InferHeader needs a request_id")
        if not header.plan.HasField("route") or not header.plan.route.steps:
            raise InvalidArgument("the plan has no server part to run (it runs wholly on the device)")
        assembler = TensorAssembler(self._limits)
        tensors: dict[str, tensor_pb2.Tensor] = {}
        for message in request_iterator:
            kind = message.WhichOneof("kind")
            if kind not in ("tensor", "chunk"):
                raise InvalidArgument("an Infer stream carries one header, first, and then only tensors")
            complete = assembler.add(getattr(message, kind))
            if complete is not None:
                tensors[complete.name] = complete
        assembler.finish()
        return header, tensors

    def _calibrate_device(self, header: frontend_pb2.InferHeader) -> None:
        """The device's own partition timings against what its reported FLOP/s predict."""
        if not header.device_steps or header.device.compute_flops <= 0:
            return
        calibration = self._planning.planner.calibration
        flops_of: dict[tuple[str, str], dict[str, float]] = {}
        for step in header.device_steps:
            ref = step.partition
            if (ref.model, ref.variant) not in flops_of:
                try:
                    flops_of[(ref.model, ref.variant)] = self._planning.partition_flops(ref.model, ref.variant)
                except SplitInferError:
                    flops_of[(ref.model, ref.variant)] = {}  # a variant the pool no longer has
            flops = flops_of[(ref.model, ref.variant)].get(ref.partition)
            if flops is None:
                continue  # nothing to learn about a partition the pool does not know
            predicted_ms = flops / header.device.compute_flops * 1e3
            key = f"{ref.model}@{ref.variant}/{ref.partition}"
            calibration.observe_device_partition(header.device.device_id, key, step.compute_ms, predicted_ms)

    def _run(
        self,
        header: frontend_pb2.InferHeader,
        tensors: dict[str, tensor_pb2.Tensor],
        context: grpc.ServicerContext,
        start: float,
    ) -> tuple[list[tensor_pb2.Tensor], frontend_pb2.InferTrace]:
        timeout_s = header.timeout_ms / 1e3 if header.timeout_ms else self._default_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_s = min(timeout_s, remaining)
        delivered, timings = self._routes.run(
            header.plan.route, tensors, request_id=header.request_id, timeout_s=timeout_s
        )
        server_ms = (time.perf_counter() - start) * 1e3
        trace = frontend_pb2.InferTrace(device_ms=header.device_ms, server_ms=server_ms, steps=timings)
        # What the servers really took teaches the cost model (queueing excluded: it is reported separately).
        predicted = {p.partition.partition: p.predicted_ms for p in header.plan.placements if not p.on_device}
        for step in timings:
            if step.partition.partition in predicted:
                self._planning.planner.calibration.observe_server(
                    step.node, step.compute_ms, predicted[step.partition.partition]
                )
        self._calibrate_device(header)
        outputs = list(delivered.values())
        if self._results is not None:
            plan = Plan.from_proto(header.plan)
            stored = self._results.put(
                result_store_pb2.StoredResult(
                    request_id=header.request_id,
                    device_id=header.device.device_id,
                    model=plan.model,
                    variant=plan.variant,
                    plan_summary=plan.summary(),
                    latency_ms=header.device_ms + server_ms,
                    outputs=outputs,
                )
            )
            if not stored:
                log.info("request %s was stored already (a concurrent retry)", header.request_id)
        return outputs, trace
