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
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch

from splitinfer.codecs import DEFAULT_LIMITS, CodecSpec, DecodeLimits, decode_tensor, encode_tensor
from splitinfer.controller.placement import placement
from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound, SplitInferError, Unavailable
from splitinfer.frontend.dispatch import Dispatcher, Job
from splitinfer.frontend.metrics import FrontEndMetrics, instrument
from splitinfer.frontend.oip_tensors import TensorSpec, parse_spec, read_inputs, write_outputs
from splitinfer.frontend.planning import PlanningService
from splitinfer.frontend.plans import PlanBook
from splitinfer.frontend.service import caller_of, trace_metadata_of
from splitinfer.frontend.serving import in_executor
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.inference import grpc_service_pb2_grpc as oip_grpc
from splitinfer.inference import model_config_pb2 as mc
from splitinfer.planner.plan import Plan
from splitinfer.pool import ModelPool
from splitinfer.registry import Registry
from splitinfer.results.keys import check_id, shown
from splitinfer.runtime import PartitionKey
from splitinfer.security.auth import TokenTable
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.clients import NodeClient
from splitinfer.transport.deadline import DEFAULT_MAX_TIMEOUT_S, clamp_timeout_s
from splitinfer.transport.reader import StreamTimeouts, next_message
from splitinfer.transport.status import bounded, status_for
from splitinfer.v1 import model_server_pb2, plan_pb2

__all__ = ["FRONT_DOOR_DEVICE", "InferenceServicer"]

log = logging.getLogger("splitinfer.frontend.oip")
Context = grpc.aio.ServicerContext

DOOR = "oip"
#: The request parameter that asks for a retry to be answered from the store (see the module docstring).
DEDUP_PARAMETER = "dedup"
SERVER_NAME = "splitinfer"
SERVER_VERSION = "0.1.0"
DIVISION = "default"
#: Protocol extensions served (the REST door adds the binary tensor data extension on its side).
EXTENSIONS = ("classification", "model_configuration", "model_repository", "statistics", "binary_tensor_data")
#: The output parameter of the classification extension (tritonclient's class_count): answer the top-k classes.
CLASS_COUNT = "classification"
#: Response parameter naming the requirements the plan could not meet ("max_latency_ms,min_accuracy").
REQUIREMENTS_MISSED = "requirements_missed"

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
    """Triton's statistics of one model version: every duration in nanoseconds, summed over the requests
    counted. queue: time the request's steps waited in the nodes' queues; compute_input: decoding inputs on
    the nodes; compute_infer: running partitions; compute_output: encoding outputs."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_ns: int = 0
    compute_output_ns: int = 0
    last_inference_ms: int = 0
    inference_count: int = 0
    #: batch size -> (executions, compute_input ns, compute_infer ns, compute_output ns)
    batches: dict[int, list[int]] = field(default_factory=dict)


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
        deployer: Deployer | None = None,
    ) -> None:
        self._planning = planning
        self._deployer = deployer
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
        rpcs = ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics", "ModelInfer", "ModelStreamInfer",
                "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")  # fmt: skip
        instrument(self, self.metrics, DOOR, rpcs)

    # --- server -------------------------------------------------------------------------------------------

    async def ServerLive(self, request: oip.ServerLiveRequest, context: Context) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: oip.ServerReadyRequest, context: Context) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=bool(self._planning.registry.servers()))

    async def ServerMetadata(self, request: oip.ServerMetadataRequest, context: Context) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS))

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
        # As Triton answers: an unknown model or version is not ready (not an error).
        try:
            variants = self._variants(request.name, request.version)
        except NotFound:
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=any(self._hosted(request.name, v)[0] for v in variants))

    def _max_batch_size(self, model: str, variant: str) -> tuple[int, float]:
        """Rows one request may carry, and the nodes' batching delay: the smallest max_batch_size of the nodes
        hosting the variant's partitions (1 when any of them does not batch)."""
        sizes, delays = [], []
        for record in self._planning.registry.servers().values():
            if any(p.startswith(f"{model}@{variant}/") for p in record.partitions):
                sizes.append(record.max_batch_size)
                delays.append(record.max_queue_delay_ms)
        return (min(sizes) if sizes else 1), (max(delays) if delays else 0.0)

    async def ModelConfig(self, request: oip.ModelConfigRequest, context: Context) -> oip.ModelConfigResponse:
        variants = self._variants(request.name, request.version)
        variant = variants[0]
        manifest = self._manifest(request.name, variant)
        inputs = [parse_spec(s) for s in manifest["inputs"]]
        outputs = [parse_spec(s) for s in manifest["outputs"]]
        batch, delay_ms = self._max_batch_size(request.name, variant)
        batched = batch > 1 and bool(inputs) and all(s.dynamic_batch for s in inputs)
        config = mc.ModelConfig(name=request.name, platform="splitinfer", backend="splitinfer")
        config.max_batch_size = batch if batched else 0
        config.version_policy.all.SetInParent()  # versions are the pool's variants (see parameters)
        for specs, field_ in ((inputs, config.input), (outputs, config.output)):
            for spec in specs:
                dims = list(spec.shape[1:] if batched and spec.dynamic_batch else spec.shape)
                field_.add(name=spec.name, data_type=_CONFIG_TYPE[spec.datatype], dims=dims)
        if batched:
            config.dynamic_batching.max_queue_delay_microseconds = int(delay_ms * 1000)
        hosts = sum(
            1 for r in self._planning.registry.servers().values()
            if any(p.startswith(f"{request.name}@{variant}/") for p in r.partitions)
        )  # fmt: skip
        config.instance_group.add(name=f"{request.name}-nodes", count=hosts, kind=mc.ModelInstanceGroup.KIND_CPU)
        entry = next(e for e in self._planning.pool.variants(request.name) if e.model == request.name
                     and e.variant == variant)  # fmt: skip
        for key, value in (("versions", ",".join(variants)), ("variant", variant), ("division", DIVISION),
                           ("partitions", str(len(manifest["partitions"]))), ("task", entry.task),
                           ("accuracy", f"{entry.accuracy:g}"),
                           ("accuracy_measured", "true" if entry.accuracy_measured else "false")):  # fmt: skip
            config.parameters[key].string_value = value
        return oip.ModelConfigResponse(config=config)

    async def ModelMetadata(self, request: oip.ModelMetadataRequest, context: Context) -> oip.ModelMetadataResponse:
        variants = self._variants(request.name, request.version)
        manifest = self._manifest(request.name, variants[0])
        inputs = [parse_spec(s) for s in manifest["inputs"]]
        outputs = [parse_spec(s) for s in manifest["outputs"]]
        response = oip.ModelMetadataResponse(name=request.name, versions=variants, platform="splitinfer")
        for specs, tensors in ((inputs, response.inputs), (outputs, response.outputs)):
            for s in specs:
                tensors.add(name=s.name, datatype=s.datatype, shape=list(s.shape))
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

    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: Context
    ) -> oip.RepositoryModelLoadResponse:
        """Deploys every variant of a pool model onto the live nodes, each partition where the Divider placed
        it (the rule ``make cluster-up`` uses); loading what a node already hosts again is harmless."""
        variants = self._variants(request.model_name)
        if self._deployer is None:
            raise FailedPrecondition("this front-end has no pool address to deploy from")
        await in_executor(self._deployer.load, request.model_name, variants)
        return oip.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: Context
    ) -> oip.RepositoryModelUnloadResponse:
        """Unloads every partition of every variant of the model from every node hosting it; the model stays
        in the pool (a later load deploys it again)."""
        self._variants(request.model_name)
        if self._deployer is None:
            raise FailedPrecondition("this front-end has no pool address to deploy from")
        await in_executor(self._deployer.unload, request.model_name)
        return oip.RepositoryModelUnloadResponse()

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
                    inference_count=s.inference_count,
                    execution_count=s.success_count,
                )
                infer = stats.inference_stats
                infer.success.count, infer.success.ns = s.success_count, s.success_ns
                infer.fail.count, infer.fail.ns = s.fail_count, s.fail_ns
                for duration, ns in (
                    (infer.queue, s.queue_ns),
                    (infer.compute_input, s.compute_input_ns),
                    (infer.compute_infer, s.compute_ns),
                    (infer.compute_output, s.compute_output_ns),
                ):
                    duration.count, duration.ns = s.success_count, ns  # fmt: skip
                for size, (count, input_ns, infer_ns, output_ns) in sorted(s.batches.items()):
                    batch = stats.batch_stats.add(batch_size=size)
                    batch.compute_input.count, batch.compute_input.ns = count, input_ns
                    batch.compute_infer.count, batch.compute_infer.ns = count, infer_ns
                    batch.compute_output.count, batch.compute_output.ns = count, output_ns
        return response

    # --- inference ----------------------------------------------------------------------------------------

    async def ModelInfer(self, request: oip.ModelInferRequest, context: Context) -> oip.ModelInferResponse:
        self.metrics.requests.labels(DOOR, "ModelInfer").inc()
        caller = caller_of(self._tokens, context, FRONT_DOOR_DEVICE.device_id)  # type: ignore[arg-type]
        return await in_executor(self._infer, request, caller, context.time_remaining(), trace_metadata_of(context))

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
                response = await in_executor(
                    self._infer, request, caller, context.time_remaining(), trace_metadata_of(context)
                )
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
        max_latency_ms = _number(params, "max_latency_ms")
        min_accuracy = _number(params, "min_accuracy")
        if not (math.isfinite(max_latency_ms) and max_latency_ms >= 0):
            raise InvalidArgument(f"max_latency_ms must be a number of milliseconds >= 0, got {max_latency_ms}")
        if not 0 <= min_accuracy <= 1:
            raise InvalidArgument(f"min_accuracy must be within [0, 1], got {min_accuracy}")
        wanted = plan_pb2.Requirements(max_latency_ms=max_latency_ms, min_accuracy=min_accuracy)
        plan = self._planning.plan(
            request.model_name, FRONT_DOOR_DEVICE, wanted, variant=request.model_version, exact=True
        )
        if plan.device_partitions or plan.route is None or not plan.route.steps:
            _, why = self._hosted(request.model_name, plan.variant)
            raise Unavailable(f"model {shown(request.model_name)} cannot run on the servers now: {why or 'no route'}")
        return plan

    def _infer(
        self,
        request: oip.ModelInferRequest,
        caller: str,
        remaining_s: float | None,
        trace_metadata: Sequence[tuple[str, str]] = (),
    ) -> oip.ModelInferResponse:
        start = time.perf_counter_ns()
        model, variant = request.model_name, ""  # statistics only for a variant that exists (a plan for it)
        try:
            check_id(request.id, "id", required=False)
            plan = self._plan(request)
            variant = plan.variant
            manifest = self._manifest(model, variant)
            batch_limit, _ = self._max_batch_size(model, variant)
            inputs = read_inputs(request, [parse_spec(s) for s in manifest["inputs"]], self._limits, batch_limit)
            output_specs: list[TensorSpec] = [parse_spec(s) for s in manifest["outputs"]]
            known = [s.name for s in output_specs]
            wanted = [o.name for o in request.outputs] or known
            unknown = [n for n in wanted if n not in known]
            if unknown:
                shown_unknown = [shown(n) for n in unknown[:8]]
                raise InvalidArgument(f"model {shown(model)} has no outputs {shown_unknown}; its outputs are {known}")
            classify = _class_counts(request, wanted)
            outputs, timings = self._run(request, caller, plan, inputs, remaining_s, trace_metadata)
            response = oip.ModelInferResponse(model_name=model, model_version=variant, id=request.id)
            write_outputs(response, {n: t for n, t in outputs.items() if n not in classify},
                          [n for n in wanted if n not in classify])  # fmt: skip
            for name, k in classify.items():
                write_classification(response, name, outputs[name], k)
            if classify:  # keep the order the client asked for
                order = {n: i for i, n in enumerate(wanted)}
                pairs = sorted(zip(response.outputs, response.raw_output_contents, strict=True),
                               key=lambda pair: order[pair[0].name])  # fmt: skip
                tensors = [oip.ModelInferResponse.InferOutputTensor() for _ in pairs]
                for tensor, (original, _) in zip(tensors, pairs, strict=True):
                    tensor.CopyFrom(original)
                del response.outputs[:]
                del response.raw_output_contents[:]
                response.outputs.extend(tensors)
                response.raw_output_contents.extend(raw for _, raw in pairs)
            if plan.violated:  # the plan could not meet everything asked: say so rather than pretend
                response.parameters[REQUIREMENTS_MISSED].string_param = ",".join(plan.violated)
        except Exception:
            if variant:
                self._record(model, variant, ok=False, elapsed_ns=time.perf_counter_ns() - start)
            raise
        batch = next((t.shape[0] for t in inputs.values() if t.dim() > 0), 1)
        self._record(model, variant, ok=True, elapsed_ns=time.perf_counter_ns() - start, timings=timings, batch=batch)
        return response

    def _run(
        self,
        request: oip.ModelInferRequest,
        caller: str,
        plan: Plan,
        inputs: dict[str, torch.Tensor],
        remaining_s: float | None,
        trace_metadata: Sequence[tuple[str, str]] = (),
    ) -> tuple[dict[str, torch.Tensor], list[model_server_pb2.StepTiming]]:
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
                trace_metadata=trace_metadata,
            )
        )
        if outcome.recalled:
            self.metrics.recalled.inc()
        timings = [] if outcome.recalled else list(outcome.timings)
        return {t.name: decode_tensor(t, self._limits) for t in outcome.outputs}, timings

    def _record(
        self,
        model: str,
        variant: str,
        *,
        ok: bool,
        elapsed_ns: int,
        timings: Sequence[model_server_pb2.StepTiming] = (),
        batch: int = 1,
    ) -> None:
        with self._lock:
            s = self._stats.setdefault((model, variant), _Stats())
            if not ok:
                s.fail_count += 1
                s.fail_ns += elapsed_ns
                return
            queue_ns = int(sum(t.queue_ms for t in timings) * 1e6)
            input_ns = int(sum(t.decode_ms for t in timings) * 1e6)
            infer_ns = int(sum(t.compute_ms for t in timings) * 1e6)
            output_ns = int(sum(t.encode_ms for t in timings) * 1e6)
            s.success_count += 1
            s.success_ns += elapsed_ns
            s.inference_count += batch
            s.queue_ns += queue_ns
            s.compute_input_ns += input_ns
            s.compute_ns += infer_ns
            s.compute_output_ns += output_ns
            row = s.batches.setdefault(batch, [0, 0, 0, 0])
            row[0] += 1
            row[1] += input_ns
            row[2] += infer_ns
            row[3] += output_ns
            s.last_inference_ms = int(time.time() * 1e3)


#: The protocol's datatype names -> ModelConfig's DataType enum.
_CONFIG_TYPE: dict[str, int] = {
    "BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16, "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8, "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64, "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING, "BF16": mc.TYPE_BF16,
}  # fmt: skip


def _number(params: Mapping[str, oip.InferParameter], key: str) -> float:
    """A numeric request parameter, whichever way the client typed it (double, int, or a string such as
    "0.9", as tritonclient sends strings); 0 when absent. A string that is no number is refused."""
    if key not in params:
        return 0.0
    param = params[key]
    choice = param.WhichOneof("parameter_choice")
    if choice in ("double_param", "int64_param", "uint64_param"):
        return float(getattr(param, choice))
    if choice == "string_param":
        try:
            return float(param.string_param)
        except ValueError:
            raise InvalidArgument(f"parameter {key} must be a number, got {shown(param.string_param)}") from None
    raise InvalidArgument(f"parameter {key} must be a number, got a {choice}")


def _class_counts(request: oip.ModelInferRequest, wanted: Sequence[str]) -> dict[str, int]:
    """Outputs the classification extension was asked for (``class_count`` > 0), by name."""
    counts = {}
    for output in request.outputs:
        if CLASS_COUNT not in output.parameters:
            continue
        param = output.parameters[CLASS_COUNT]
        k = param.int64_param if param.WhichOneof("parameter_choice") == "int64_param" else -1
        if not 0 < k <= 1_000_000:
            raise InvalidArgument(f"{CLASS_COUNT} of output {shown(output.name)} must be a positive integer")
        counts[output.name] = k
    return {n: counts[n] for n in wanted if n in counts}


def write_classification(response: oip.ModelInferResponse, name: str, tensor: torch.Tensor, k: int) -> None:
    """The classification extension: the top ``k`` classes of each row of ``tensor`` (the last dimension
    holds the class scores) as a BYTES tensor of ``"score:index"`` strings, best first."""
    scores = tensor.detach().float()
    if scores.dim() == 0:
        raise InvalidArgument(f"output {shown(name)} is a scalar; it has no classes to rank")
    rows = scores.reshape(-1, scores.shape[-1]) if scores.dim() > 1 else scores.reshape(1, -1)
    k = min(k, rows.shape[-1])
    values, indexes = torch.topk(rows, k, dim=-1)
    items = [f"{v:f}:{i}".encode() for v, i in zip(values.flatten().tolist(), indexes.flatten().tolist(), strict=True)]
    shape = [*scores.shape[:-1], k] if scores.dim() > 1 else [k]
    response.outputs.add(name=name, datatype="BYTES", shape=shape)
    response.raw_output_contents.append(b"".join(len(item).to_bytes(4, "little") + item for item in items))


class Deployer:
    """Repository load/unload for the OIP door: partitions loaded where the Divider placed them, through the
    nodes' administrative RPCs (with ``security``, the admin identity when the cluster runs TLS)."""

    def __init__(
        self, pool: ModelPool, registry: Registry, pool_address: str = "", security: ClientSecurity | None = None
    ) -> None:
        self._pool = pool
        self._registry = registry
        #: host:port of the ModelPoolService nodes pull from (the front-end's own, known once it is bound).
        self.pool_address = pool_address
        self._security = security

    def load(self, model: str, variants: Sequence[str]) -> None:
        nodes = sorted(self._registry.servers())
        if not nodes:
            raise Unavailable("no live node to deploy onto")
        for variant in variants:
            sha = self._pool.resolve(model, variant, DIVISION)
            parts = [(p.name, p.host) for p in self._pool.division(sha).partitions]
            for name, addresses in placement(parts, [(a, a) for a in nodes]).items():
                for address in addresses:
                    with NodeClient(address, security=self._security) as client:
                        client.load_partition(f"pool://{self.pool_address}/{sha}/{name}",
                                              PartitionKey(model, variant, name))  # fmt: skip

    def unload(self, model: str) -> None:
        for address, record in sorted(self._registry.servers().items()):
            for key in record.partitions:
                if key.startswith(f"{model}@"):
                    with NodeClient(address, security=self._security) as client:
                        client.unload_partition(PartitionKey.parse(key))
