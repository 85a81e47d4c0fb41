"""The Open Inference Protocol front door: ``inference.GRPCInferenceService`` on the front-end.

Unmodified KServe v2 / Triton clients run any model in the pool through it. A model is a pool model, a
version is one of its variants (none named: the planner picks). The front-end stands in for the device: the
request is planned with every partition on the servers, run along the plan's route, and answered with raw
output bytes; the result is stored like any other request's (a retry with the same ``id`` is answered from
the store, not run twice).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from splitinfer.codecs import DEFAULT_LIMITS, CodecSpec, DecodeLimits, decode_tensor, encode_tensor
from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound, SplitInferError, Unavailable
from splitinfer.frontend.oip_tensors import TensorSpec, parse_spec, read_inputs, write_outputs
from splitinfer.frontend.planning import PlanningService
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.inference import grpc_service_pb2_grpc as oip_grpc
from splitinfer.planner.plan import Plan
from splitinfer.results.client import Results, stored_result
from splitinfer.transport.clients import RouteClient
from splitinfer.transport.status import abort, status_for
from splitinfer.v1 import plan_pb2, result_store_pb2

__all__ = ["FRONT_DOOR_DEVICE", "InferenceServicer"]

log = logging.getLogger("splitinfer.frontend.oip")

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
        self._stats: dict[tuple[str, str], _Stats] = {}
        self._lock = threading.Lock()

    # --- server -------------------------------------------------------------------------------------------

    def ServerLive(self, request: oip.ServerLiveRequest, context: grpc.ServicerContext) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    def ServerReady(self, request: oip.ServerReadyRequest, context: grpc.ServicerContext) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=bool(self._planning.registry.servers()))

    def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["statistics"])

    # --- models -------------------------------------------------------------------------------------------

    def _variants(self, model: str, version: str = "") -> list[str]:
        variants = [e.variant for e in self._planning.pool.variants(model) if e.model == model]
        if not variants:
            raise NotFound(f"model {model!r} is not in the pool")
        if version:
            if version not in variants:
                raise NotFound(f"model {model!r} has no version {version!r}; its versions are {variants}")
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

    def ModelReady(self, request: oip.ModelReadyRequest, context: grpc.ServicerContext) -> oip.ModelReadyResponse:
        try:
            ready = any(self._hosted(request.name, v)[0] for v in self._variants(request.name, request.version))
        except SplitInferError as exc:
            abort(context, exc)
        return oip.ModelReadyResponse(ready=ready)

    def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ModelMetadataResponse:
        try:
            variants = self._variants(request.name, request.version)
            manifest = self._manifest(request.name, variants[0])
            inputs = [parse_spec(s) for s in manifest["inputs"]]
            outputs = [parse_spec(s) for s in manifest["outputs"]]
        except SplitInferError as exc:
            abort(context, exc)
        response = oip.ModelMetadataResponse(name=request.name, versions=variants, platform="splitinfer")
        for spec, field in ((inputs, response.inputs), (outputs, response.outputs)):
            for s in spec:
                field.add(name=s.name, datatype=s.datatype, shape=list(s.shape))
        return response

    def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.ServicerContext
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

    def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        try:
            if request.name:
                self._variants(request.name, request.version)
        except SplitInferError as exc:
            abort(context, exc)
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

    def ModelInfer(self, request: oip.ModelInferRequest, context: grpc.ServicerContext) -> oip.ModelInferResponse:
        try:
            return self._infer(request, context.time_remaining())
        except SplitInferError as exc:
            log.info("ModelInfer %s/%s refused: %s", request.model_name, request.id, exc)
            abort(context, exc)

    def ModelStreamInfer(
        self, request_iterator: Iterator[oip.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[oip.ModelStreamInferResponse]:
        # As in the protocol: a failed request is reported in its response and the stream goes on.
        for request in request_iterator:
            try:
                yield oip.ModelStreamInferResponse(infer_response=self._infer(request, context.time_remaining()))
            except SplitInferError as exc:
                log.info("ModelStreamInfer %s/%s refused: %s", request.model_name, request.id, exc)
                yield oip.ModelStreamInferResponse(
                    error_message=f"{status_for(exc).name}: {exc}",
                    infer_response=oip.ModelInferResponse(
                        model_name=request.model_name, model_version=request.model_version, id=request.id
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
            raise Unavailable(f"model {request.model_name!r} cannot run on the servers now: {why or 'no route'}")
        return plan

    def _infer(self, request: oip.ModelInferRequest, remaining_s: float | None) -> oip.ModelInferResponse:
        start = time.perf_counter_ns()
        model, variant = request.model_name, request.model_version
        try:
            plan = self._plan(request)
            variant = plan.variant
            manifest = self._manifest(model, variant)
            inputs = read_inputs(request, [parse_spec(s) for s in manifest["inputs"]], self._limits)
            output_specs: list[TensorSpec] = [parse_spec(s) for s in manifest["outputs"]]
            known = [s.name for s in output_specs]
            wanted = [o.name for o in request.outputs] or known
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise InvalidArgument(f"model {model!r} has no outputs {unknown}; its outputs are {known}")
            request_id = request.id or uuid.uuid4().hex
            outputs, compute_ns = self._run_or_recall(plan, request_id, inputs, remaining_s)
        except SplitInferError:
            if variant:
                self._record(model, variant, ok=False, elapsed_ns=time.perf_counter_ns() - start)
            raise
        response = oip.ModelInferResponse(model_name=model, model_version=variant, id=request.id)
        write_outputs(response, outputs, wanted)
        self._record(model, variant, ok=True, elapsed_ns=time.perf_counter_ns() - start, compute_ns=compute_ns)
        return response

    def _run_or_recall(
        self, plan: Plan, request_id: str, inputs: dict[str, torch.Tensor], remaining_s: float | None
    ) -> tuple[dict[str, torch.Tensor], int]:
        stored = stored_result(self._results, request_id)
        if stored is not None:
            if stored.model != plan.model:
                raise FailedPrecondition(f"request id {request_id!r} was already used for model {stored.model!r}")
            return {t.name: decode_tensor(t, self._limits) for t in stored.outputs}, 0
        codecs = {c.tensor: c.codec for c in plan.crossings}
        encoded = {n: encode_tensor(t, n, codecs.get(n, CodecSpec())) for n, t in inputs.items()}
        timeout_s = self._default_timeout_s if remaining_s is None else min(self._default_timeout_s, remaining_s)
        assert plan.route is not None
        start = time.perf_counter()
        delivered, timings = self._routes.run(plan.route, encoded, request_id=request_id, timeout_s=timeout_s)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        compute_ns = int(sum(t.compute_ms for t in timings) * 1e6)
        if self._results is not None:
            self._results.put(
                result_store_pb2.StoredResult(
                    request_id=request_id,
                    device_id=FRONT_DOOR_DEVICE.device_id,
                    model=plan.model,
                    variant=plan.variant,
                    plan_summary=plan.summary(),
                    latency_ms=elapsed_ms,
                    outputs=list(delivered.values()),
                )
            )
        return {n: decode_tensor(t, self._limits) for n, t in delivered.items()}, compute_ns

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
