"""The Open Inference Protocol front door: ``inference.GRPCInferenceService`` on the front-end.

Unmodified KServe v2 / Triton clients run any model in the pool through it. A model is a pool model, a
version is one of its variants (none named: the planner picks). The front-end stands in for the device: the
request is planned with every partition on the servers, run along the plan's route by the dispatcher both
front doors share, and answered with raw output bytes; the result is stored like any other request's.

``id`` is a correlation id only: it is echoed, and two requests with the same ``id`` are two requests.
A client that wants a retry answered from the store instead of run again asks for it with the request
parameter ``dedup`` (bool) set: then the ``id`` (at most 128 bytes) names the request among the caller's
requests, and the same id with other inputs answers FAILED_PRECONDITION. The caller is the token's identity
with authentication on, else every OIP client is the one caller ``oip-front-door``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from splitinfer.codecs import DEFAULT_LIMITS, CodecSpec, DecodeLimits, decode_tensor, encode_tensor
from splitinfer.errors import InvalidArgument, NotFound, SplitInferError, Unavailable
from splitinfer.frontend.dispatch import Dispatcher, Job
from splitinfer.frontend.metrics import FrontEndMetrics, instrument
from splitinfer.frontend.oip_tensors import TensorSpec, parse_spec, read_inputs, write_outputs
from splitinfer.frontend.planning import PlanningService
from splitinfer.frontend.plans import PlanBook
from splitinfer.frontend.service import caller_of
from splitinfer.frontend.serving import in_executor
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.inference import grpc_service_pb2_grpc as oip_grpc
from splitinfer.planner.plan import Plan
from splitinfer.results.keys import check_id, shown
from splitinfer.security.auth import TokenTable
from splitinfer.transport.deadline import DEFAULT_MAX_TIMEOUT_S, clamp_timeout_s
from splitinfer.transport.reader import StreamTimeouts, next_message
from splitinfer.transport.status import bounded, status_for
from splitinfer.v1 import plan_pb2

__all__ = ["FRONT_DOOR_DEVICE", "InferenceServicer"]

log = logging.getLogger("splitinfer.frontend.oip")
Context = grpc.aio.ServicerContext

DOOR = "oip"
#: The request parameter that asks for a retry to be answered from the store (see the module docstring).
DEDUP_PARAMETER = "dedup"
SERVER_NAME = "splitinfer"
SERVER_VERSION = "0.1.0"
DIVISION = "default"

#: How the front-end describes itself to the planner when it stands in for the device: it runs no partition
#: (compute_flops 0) and sits on the servers' network.
FRONT_DOOR_DEVICE = plan_pb2.DeviceState(
    device_id="oip-front-door",
    device_class="front-door",
    compute_flops=0.0,
    uplink_mbps=10_000.0,
    downlink_mbps=10_000.0,
    rtt_ms=0.2,
    battery_percent=100.0,
    charging=True,
)


@dataclass
class _Stats:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    compute_count: int = 0
    compute_ns: int = 0
    last_inference_ms: int = 0


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        planning: PlanningService,
        dispatcher: Dispatcher,
        plans: PlanBook,
        *,
        tokens: TokenTable | None = None,
        metrics: FrontEndMetrics | None = None,
        default_timeout_s: float = 30.0,
        max_timeout_s: float = DEFAULT_MAX_TIMEOUT_S,
        limits: DecodeLimits = DEFAULT_LIMITS,
        timeouts: StreamTimeouts | None = None,
    ) -> None:
        self._planning = planning
        self._dispatcher = dispatcher
        self._plans = plans
        self._tokens = tokens
        self.metrics = metrics or FrontEndMetrics()
        self._default_timeout_s = default_timeout_s
        self._max_timeout_s = max_timeout_s
        self._limits = limits
        self._timeouts = timeouts or StreamTimeouts()
        self._stats: dict[tuple[str, str], _Stats] = {}
        self._lock = threading.Lock()
        rpcs = ("ModelReady", "ModelMetadata", "ModelStatistics", "ModelInfer", "ModelStreamInfer", "RepositoryIndex")
        instrument(self, self.metrics, DOOR, rpcs)

    # --- server -------------------------------------------------------------------------------------------

    async def ServerLive(self, request: oip.ServerLiveRequest, context: Context) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: oip.ServerReadyRequest, context: Context) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=bool(self._planning.registry.servers()))

    async def ServerMetadata(self, request: oip.ServerMetadataRequest, context: Context) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["statistics"])

    # --- models -------------------------------------------------------------------------------------------

    def _variants(self, model: str, version: str = "") -> list[str]:
        check_id(model, "model name")
        check_id(version, "model version", required=False)
        variants = [e.variant for e in self._planning.pool.variants(model) if e.model == model]
        if not variants:
            raise NotFound(f"model {shown(model)} is not in the pool")
        if version:
            if version not in variants:
                raise NotFound(f"model {shown(model)} has no version {shown(version)}; its versions are {variants}")
            return [version]
        return variants

    def _manifest(self, model: str, variant: str) -> dict[str, Any]:
        return self._planning.pool.manifest(self._planning.pool.resolve(model, variant, DIVISION))

    def _hosted(self, model: str, variant: str) -> tuple[bool, str]:
        """Whether live servers host every partition of the variant, and if not, which are missing."""
        hosted = {p for record in self._planning.registry.servers().values() for p in record.partitions}
        names = [p["name"] for p in self._manifest(model, variant)["partitions"]]
        missing = [n for n in names if f"{model}@{variant}/{n}" not in hosted]
        return not missing, f"no live server hosts partitions {missing}" if missing else ""

    async def ModelReady(self, request: oip.ModelReadyRequest, context: Context) -> oip.ModelReadyResponse:
        ready = any(self._hosted(request.name, v)[0] for v in self._variants(request.name, request.version))
        return oip.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: oip.ModelMetadataRequest, context: Context) -> oip.ModelMetadataResponse:
        variants = self._variants(request.name, request.version)
        manifest = self._manifest(request.name, variants[0])
        inputs = [parse_spec(s) for s in manifest["inputs"]]
        outputs = [parse_spec(s) for s in manifest["outputs"]]
        response = oip.ModelMetadataResponse(name=request.name, versions=variants, platform="splitinfer")
        for spec, field in ((inputs, response.inputs), (outputs, response.outputs)):
            for s in spec:
                field.add(name=s.name, datatype=s.datatype, shape=list(s.shape))
        return response

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        response = oip.RepositoryIndexResponse()
        for entry in self._planning.pool.variants():
            if DIVISION not in entry.divisions:
                continue
            ready, reason = self._hosted(entry.model, entry.variant)
            if request.ready and not ready:
                continue
            response.models.add(
                name=entry.model, version=entry.variant, state="READY" if ready else "UNAVAILABLE", reason=reason
            )
        return response

    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: Context
    ) -> oip.ModelStatisticsResponse:
        if request.name:
            self._variants(request.name, request.version)
        response = oip.ModelStatisticsResponse()
        with self._lock:
            for (model, variant), s in sorted(self._stats.items()):
                if request.name and (model != request.name or (request.version and variant != request.version)):
                    continue
                stats = response.model_stats.add(
                    name=model,
                    version=variant,
                    last_inference=s.last_inference_ms,
                    inference_count=s.success_count,
                    execution_count=s.success_count,
                )
                stats.inference_stats.success.count, stats.inference_stats.success.ns = s.success_count, s.success_ns
                stats.inference_stats.fail.count, stats.inference_stats.fail.ns = s.fail_count, s.fail_ns
                stats.inference_stats.compute_infer.count = s.compute_count
                stats.inference_stats.compute_infer.ns = s.compute_ns
        return response

    # --- inference ----------------------------------------------------------------------------------------

    async def ModelInfer(self, request: oip.ModelInferRequest, context: Context) -> oip.ModelInferResponse:
        self.metrics.requests.labels(DOOR, "ModelInfer").inc()
        caller = caller_of(self._tokens, context, FRONT_DOOR_DEVICE.device_id)  # type: ignore[arg-type]
        return await in_executor(self._infer, request, caller, context.time_remaining())

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[oip.ModelInferRequest], context: Context
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        # As in the protocol: a failed request is reported in its response and the stream goes on. A stream
        # that sends nothing for the idle timeout is closed.
        caller = caller_of(self._tokens, context, FRONT_DOOR_DEVICE.device_id)  # type: ignore[arg-type]
        requests = aiter(request_iterator)
        wait_s = self._timeouts.first_message_s
        while (request := await next_message(requests, wait_s, "ModelStreamInfer request")) is not None:
            wait_s = self._timeouts.idle_s
            self.metrics.requests.labels(DOOR, "ModelStreamInfer").inc()
            try:
                response = await in_executor(self._infer, request, caller, context.time_remaining())
                yield oip.ModelStreamInferResponse(infer_response=response)
            except Exception as exc:
                code = status_for(exc).name
                self.metrics.failures.labels(DOOR, "ModelStreamInfer", code).inc()
                if isinstance(exc, SplitInferError):
                    log.info("ModelStreamInfer %s/%s refused: %s", shown(request.model_name), shown(request.id), exc)
                    message = str(exc)
                else:  # a bug: the traceback stays in this log
                    log.exception("ModelStreamInfer %s/%s failed", shown(request.model_name), shown(request.id))
                    message = "internal error; the server logged the cause"
                yield oip.ModelStreamInferResponse(
                    error_message=bounded(f"{code}: {message}"),
                    infer_response=oip.ModelInferResponse(
                        model_name=request.model_name[:128],
                        model_version=request.model_version[:128],
                        id=request.id[:128],
                    ),
                )

    def _plan(self, request: oip.ModelInferRequest) -> Plan:
        if not request.model_name:
            raise InvalidArgument("ModelInferRequest needs a model_name")
        self._variants(request.model_name, request.model_version)
        params = request.parameters
        wanted = plan_pb2.Requirements(
            max_latency_ms=params["max_latency_ms"].double_param if "max_latency_ms" in params else 0.0,
            min_accuracy=params["min_accuracy"].double_param if "min_accuracy" in params else 0.0,
        )
        plan = self._planning.plan(
            request.model_name, FRONT_DOOR_DEVICE, wanted, variant=request.model_version, exact=True
        )
        if plan.device_partitions or plan.route is None or not plan.route.steps:
            _, why = self._hosted(request.model_name, plan.variant)
            raise Unavailable(f"model {shown(request.model_name)} cannot run on the servers now: {why or 'no route'}")
        return plan

    def _infer(self, request: oip.ModelInferRequest, caller: str, remaining_s: float | None) -> oip.ModelInferResponse:
        start = time.perf_counter_ns()
        model, variant = request.model_name, ""  # statistics only for a variant that exists (a plan for it)
        try:
            check_id(request.id, "id", required=False)
            plan = self._plan(request)
            variant = plan.variant
            manifest = self._manifest(model, variant)
            inputs = read_inputs(request, [parse_spec(s) for s in manifest["inputs"]], self._limits)
            output_specs: list[TensorSpec] = [parse_spec(s) for s in manifest["outputs"]]
            known = [s.name for s in output_specs]
            wanted = [o.name for o in request.outputs] or known
            unknown = [n for n in wanted if n not in known]
            if unknown:
                shown_unknown = [shown(n) for n in unknown[:8]]
                raise InvalidArgument(f"model {shown(model)} has no outputs {shown_unknown}; its outputs are {known}")
            outputs, compute_ns = self._run(request, caller, plan, inputs, remaining_s)
        except Exception:
            if variant:
                self._record(model, variant, ok=False, elapsed_ns=time.perf_counter_ns() - start)
            raise
        response = oip.ModelInferResponse(model_name=model, model_version=variant, id=request.id)
        write_outputs(response, outputs, wanted)
        self._record(model, variant, ok=True, elapsed_ns=time.perf_counter_ns() - start, compute_ns=compute_ns)
        return response

    def _run(
        self,
        request: oip.ModelInferRequest,
        caller: str,
        plan: Plan,
        inputs: dict[str, torch.Tensor],
        remaining_s: float | None,
    ) -> tuple[dict[str, torch.Tensor], int]:
        dedup = DEDUP_PARAMETER in request.parameters and request.parameters[DEDUP_PARAMETER].bool_param
        if dedup and not request.id:
            raise InvalidArgument(f"the {DEDUP_PARAMETER!r} parameter needs an id to deduplicate by")
        # Without dedup, the id only correlates: every request is its own.
        request_id = request.id if dedup else f"oip-{uuid.uuid4().hex}"
        issued = self._plans.issue(plan, caller, FRONT_DOOR_DEVICE.device_id, keep=False)
        codecs = {c.tensor: c.codec for c in plan.crossings}
        encoded = {n: encode_tensor(t, n, codecs.get(n, CodecSpec())) for n, t in inputs.items()}
        timeout_ms = int(self._default_timeout_s * 1e3)
        outcome = self._dispatcher.run(
            Job(
                caller=caller,
                request_id=request_id,
                issued=issued,
                tensors=encoded,
                timeout_s=clamp_timeout_s(timeout_ms, remaining_s, self._max_timeout_s),
                device_id=FRONT_DOOR_DEVICE.device_id,
            )
        )
        if outcome.recalled:
            self.metrics.recalled.inc()
        compute_ns = int(sum(t.compute_ms for t in outcome.timings) * 1e6)
        return {t.name: decode_tensor(t, self._limits) for t in outcome.outputs}, compute_ns

    def _record(self, model: str, variant: str, *, ok: bool, elapsed_ns: int, compute_ns: int = 0) -> None:
        with self._lock:
            s = self._stats.setdefault((model, variant), _Stats())
            if ok:
                s.success_count += 1
                s.success_ns += elapsed_ns
                s.compute_count += 1
                s.compute_ns += compute_ns
                s.last_inference_ms = int(time.time() * 1e3)
            else:
                s.fail_count += 1
                s.fail_ns += elapsed_ns
