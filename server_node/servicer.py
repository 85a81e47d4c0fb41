"""The ModelServerService servicer on ``grpc.aio``: read and check, apply the deadline, call the executor.

Every method is wrapped once by :func:`~splitinfer.transport.status.map_errors` (errors by the one table,
failures counted by code in the node's metrics). When its header arrives, a data-plane call is admitted
(``max_in_flight``) and the header is checked before any tensor payload is buffered (:mod:`server_node.checks`,
:mod:`server_node.trust`), its memory reserved against the node's budget, and only then are its tensors
read, each into one buffer, under the first-message and idle timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import Any

import grpc
import psutil
from opentelemetry import trace

from server_node.checks import MemoryBudget, RouteLimits, entry_precheck, validate_route
from server_node.compute import ComputePool
from server_node.config import NodeConfig
from server_node.executor import RequestExecutor, key_of
from server_node.forwarder import GrpcForwarder
from server_node.host import PartitionHost
from server_node.metrics import NodeMetrics
from server_node.trust import RouteTrust
from splitinfer import tracing
from splitinfer.codecs import ChunkAssembler, CodecSpec, DecodeLimits, WireTensor
from splitinfer.codecs.dtypes import from_torch
from splitinfer.errors import FailedPrecondition, InvalidArgument
from splitinfer.pool.service import POOL_SCHEME, fetch_partition
from splitinfer.program import ValueSpec
from splitinfer.routing import ReplicaBalancer
from splitinfer.runtime import LoadedPartition
from splitinfer.transport.aio_server import StreamLimiter
from splitinfer.transport.deadline import Deadline
from splitinfer.transport.frames import (
    OnceFrame,
    StreamFrame,
    done_frame,
    once_response,
    parse_once_request,
    parse_process_request,
    stream_frames,
)
from splitinfer.transport.reader import Admission, StreamTimeouts, read_stream
from splitinfer.transport.retry import RetryPolicy
from splitinfer.transport.status import map_errors, set_request_id
from splitinfer.v1 import model_server_pb2, model_server_pb2_grpc, route_pb2, tensor_pb2

__all__ = ["ModelServerServicer", "add_to_server"]

log = logging.getLogger("splitinfer.server")
#: Bound on the cached byte-counter children (direction x codec: a handful in practice; a peer cycling
#: through codec levels cannot grow the cache without bound).
_MAX_LABEL_CHILDREN = 256


class ModelServerServicer(model_server_pb2_grpc.ModelServerServiceServicer):
    def __init__(
        self,
        config: NodeConfig,
        host: PartitionHost,
        address: str,
        compute_flops: float,
        balancer: ReplicaBalancer,
        pool: ComputePool,
        trust: RouteTrust,
        *,
        on_change: Callable[[], None] = lambda: None,
        metrics: NodeMetrics | None = None,
        limiter: StreamLimiter | None = None,
    ) -> None:
        self._on_change = on_change
        self.metrics = metrics or NodeMetrics()
        # Metric children kept, not looked up per request (``labels()`` costs microseconds per call).
        self._requests_process = self.metrics.requests.labels("Process")
        self._requests_once = self.metrics.requests.labels("ProcessOnce")
        self._bytes_metrics: dict[tuple[str, int, int, int], Any] = {}
        self._step_metrics: dict[tuple[str, str, str], tuple[str, Any, Any]] = {}
        #: Requests executing (what the splitinfer_in_flight gauge reads when scraped: a plain counter on the
        #: event loop, cheaper per request than the gauge's locked inc and dec).
        self._executing = 0
        self.metrics.in_flight.set_function(lambda: self._executing)
        self._config = config
        self._host = host
        self.address = address
        self._flops = compute_flops
        self._started = time.monotonic()
        self._limits = DecodeLimits(max_tensor_bytes=config.max_tensor_bytes)
        self._route_limits = RouteLimits(config.max_route_steps, config.max_fanout)
        self._timeouts = StreamTimeouts(config.first_message_timeout_s, config.idle_timeout_s)
        self._trust = trust
        self._limiter = limiter
        self.pool = pool
        self.budget = MemoryBudget(config.max_in_flight_bytes)
        self._entries: weakref.WeakKeyDictionary[
            LoadedPartition, tuple[Callable[[tensor_pb2.Tensor], None], int, int]
        ] = weakref.WeakKeyDictionary()
        policy = RetryPolicy(max_attempts=config.forward_attempts)
        self.forwarder = GrpcForwarder(config.chunk_bytes, config.max_message_bytes, balancer, policy, self._limits)
        self.executor = RequestExecutor(
            host, address, self.forwarder, pool, self._limits, join_timeout_s=config.join_timeout_s
        )
        self._cache_dir = Path(config.cache_dir or tempfile.mkdtemp(prefix="splitinfer-node-cache-"))

    def count_failure(self, code: grpc.StatusCode) -> None:
        """Every failed call, by status code (called by map_errors)."""
        self.metrics.errors.labels(code.name).inc()

    def _admit(
        self, header: model_server_pb2.RequestHeader, context: grpc.aio.ServicerContext
    ) -> tuple[Admission, Deadline, int]:
        """Everything checked on the header alone, before any payload: see the module docstring. Admission
        (``max_in_flight``) counts from here: a stream that never sends its header holds no slot. On success
        the request holds a slot and the returned bytes of the memory budget: :meth:`_release` them."""
        deadline = Deadline.from_header(header.timeout_ms, context.time_remaining(), self._config.max_timeout_s)
        set_request_id(header.request_id)
        self._host.enter()
        try:
            validate_route(header, self._route_limits, self.executor.may_enter)
            if self._trust.enforced:
                self._trust.check(header.route, context.peer() or "")
            partition = self._host.get(key_of(header.route.steps[header.entry_step].partition))
            entry = self._entries.get(partition)
            if entry is None:  # once per loaded partition: its precheck, byte budget and decoded input bytes
                precheck, budget = entry_precheck(partition, self._config.max_request_bytes)
                entry = self._entries[partition] = (precheck, budget, sum(s.nbytes for s in partition.inputs))
            precheck, budget, decoded = entry
            try:
                self.budget.take(budget + decoded)
            except Exception:
                self._host.refused += 1
                raise
        except BaseException:
            self._host.leave()
            raise
        return Admission(precheck, budget), deadline, budget + decoded

    def _release(self, reserved_bytes: int) -> None:
        """Gives back what :meth:`_admit` took."""
        self.budget.give(reserved_bytes)
        self._host.leave()

    @map_errors()
    async def Process(
        self, request_iterator: AsyncIterator[StreamFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Requests arrive as :class:`~splitinfer.transport.frames.StreamFrame` s, responses leave as
        serialized ProcessResponses (:func:`add_to_server` registers the frame (de)serializers)."""
        self._requests_process.inc()
        with ExitStack() as stack:
            admitted: list[Deadline] = []

            def admit(header: model_server_pb2.RequestHeader) -> Admission:
                admission, deadline, reserved = self._admit(header, context)
                stack.callback(self._release, reserved)
                admitted.append(deadline)
                return admission

            header, received = await read_stream(
                request_iterator, self._timeouts, self._limits, admit=admit, what="Process"
            )
            deadline = admitted[0]
            for tensor in received.values():
                self._count_bytes("in", tensor)
            timings = []
            async for item in self._execute(header, received, deadline, context.invocation_metadata()):
                if isinstance(item, model_server_pb2.StepTiming):
                    timings.append(item)
                    continue
                self._count_bytes("out", item)
                for message in stream_frames([item], request=False, chunk_bytes=self._config.chunk_bytes):
                    yield message
            yield done_frame(model_server_pb2.ProcessDone(timings=timings))

    @map_errors()
    async def ProcessOnce(self, request: OnceFrame, context: grpc.aio.ServicerContext) -> bytes:
        """The request arrives as an :class:`~splitinfer.transport.frames.OnceFrame`, the response leaves as
        a serialized ProcessOnceResponse."""
        self._requests_once.inc()
        header = request.header
        if header is None:
            raise InvalidArgument("ProcessOnce needs a header")
        admission, deadline, reserved = self._admit(header, context)
        try:
            assembler = ChunkAssembler(
                self._limits, precheck=admission.precheck, max_total_bytes=admission.max_total_bytes
            )
            received: dict[str, WireTensor] = {}
            for tensor in request.tensors:
                complete = assembler.add(tensor)
                if complete is None:
                    raise InvalidArgument(
                        f"tensor {tensor.name[:100]!r} is incomplete; stream large tensors with Process"
                    )
                received[complete.name] = complete
                self._count_bytes("in", complete)
            done = model_server_pb2.ProcessDone()
            metadata = context.invocation_metadata()
            alone = self.executor.alone(header, received)
            if alone is not None and not tracing.traced(metadata):
                delivered, timing = await self._run_alone(*alone, received, deadline)
                done.timings.append(timing)
            else:
                delivered = []
                async for item in self._execute(header, received, deadline, metadata):
                    if isinstance(item, model_server_pb2.StepTiming):
                        done.timings.append(item)
                    else:
                        delivered.append(item)
            for tensor in delivered:
                self._count_bytes("out", tensor)
            return once_response(delivered, done)
        finally:
            self._release(reserved)

    async def _run_alone(
        self,
        step: route_pb2.RouteStep,
        partition: LoadedPartition,
        received: dict[str, WireTensor],
        deadline: Deadline,
    ) -> tuple[list[WireTensor], model_server_pb2.StepTiming]:
        """:meth:`_execute` for a request of one step alone (``RequestExecutor.alone``) that nobody traces:
        the same deadline check, in-flight gauge and step metrics around ``RequestExecutor.run_alone``,
        without the two async-generator layers (the common single-step ProcessOnce)."""
        deadline.check("after reading the request")
        self._executing += 1
        try:
            delivered, timing = await self.executor.run_alone(step, partition, received, deadline)
        finally:
            self._executing -= 1
        self._observe(timing, traced=False)
        return delivered, timing

    def _count_bytes(self, direction: str, tensor: WireTensor) -> None:
        encoding = tensor.head.encoding
        key = (direction, encoding.lossy, encoding.lossless, encoding.level)
        child = self._bytes_metrics.get(key)
        if child is None:  # once per direction and codec (a codec is three small enums)
            if len(self._bytes_metrics) >= _MAX_LABEL_CHILDREN:
                self._bytes_metrics.clear()
            child = self._bytes_metrics[key] = self.metrics.bytes.labels(direction, str(CodecSpec.from_proto(encoding)))
        child.inc(tensor.nbytes)

    async def _execute(
        self,
        header: model_server_pb2.RequestHeader,
        received: dict[str, WireTensor],
        deadline: Deadline,
        metadata: Any = None,
    ) -> AsyncIterator[WireTensor | model_server_pb2.StepTiming]:
        """The executor's output for one request, with its timings recorded in the metrics and, when traced
        (:func:`splitinfer.tracing.traced`), in a trace span (a child of the caller's, from the W3C trace
        context in ``metadata``), one child span per step."""
        deadline.check("after reading the request")
        self._executing += 1
        traced = tracing.traced(metadata)  # no span bookkeeping on the hot path when nobody traces
        span: AbstractContextManager[Any] = nullcontext()
        if traced:
            attributes = {"splitinfer.request_id": header.request_id, "splitinfer.node": self.address,
                          "splitinfer.entry_step": header.entry_step}  # fmt: skip
            span = tracing.span("splitinfer.node.process", parent=tracing.extract(metadata), attributes=attributes,
                                kind=trace.SpanKind.SERVER)  # fmt: skip
        try:
            with span:
                async for item in self.executor.execute(header, received, deadline):
                    if isinstance(item, model_server_pb2.StepTiming) and item.node == self.address:
                        self._observe(item, traced=traced)
                    yield item
        finally:
            self._executing -= 1

    def _observe(self, item: model_server_pb2.StepTiming, *, traced: bool) -> None:
        """One step's timing in the metrics (and as a span when ``traced``)."""
        ref = item.partition
        children = self._step_metrics.get((ref.model, ref.variant, ref.partition))
        if children is None:  # once per partition: labels() per call costs more than the observation
            name = str(key_of(ref))
            children = (name, self.metrics.compute_seconds.labels(name), self.metrics.queue_seconds.labels(name))
            self._step_metrics[(ref.model, ref.variant, ref.partition)] = children
        name, compute, queue = children
        compute.observe(item.compute_ms / 1e3)
        queue.observe(item.queue_ms / 1e3)
        if traced:
            tracing.record_step(
                f"splitinfer.step {name}",
                {"queue": item.queue_ms, "decode": item.decode_ms, "compute": item.compute_ms,
                 "encode": item.encode_ms},
                {"splitinfer.partition": name, "splitinfer.node": self.address},
            )  # fmt: skip

    @map_errors()
    async def GetStatus(
        self, request: model_server_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> model_server_pb2.GetStatusResponse:
        memory = psutil.virtual_memory()
        limiter = self._limiter
        return model_server_pb2.GetStatusResponse(
            address=self.address,
            in_flight=self._host.in_flight,
            partitions=[_hosted(p, queued) for p, queued in self._host.hosted()],
            process_memory_bytes=psutil.Process().memory_info().rss,
            machine_memory_bytes=memory.total,
            machine_available_bytes=memory.available,
            compute_flops=self._flops,
            cpu_cores=len(os.sched_getaffinity(0)),
            device="cpu",
            uptime_s=time.monotonic() - self._started,
            queue_length=self.pool.queue_length(),
            open_streams=limiter.active if limiter is not None else 0,
            refused=self._host.refused + (limiter.refused if limiter is not None else 0),
            in_flight_bytes=self.budget.used_bytes,
            in_flight_bytes_limit=self.budget.limit_bytes,
        )

    def _load(self, request: model_server_pb2.LoadPartitionRequest) -> LoadedPartition:
        """Blocking: pulls (when from a pool), verifies and loads; run on a worker thread."""
        expected = key_of(request.partition) if request.partition.model else None
        if request.source.startswith(POOL_SCHEME):
            # Straight from the verified blobs in the node's cache: nothing is rewritten or hashed again.
            pool, division_sha, partition = fetch_partition(request.source, self._cache_dir)
            if request.manifest_sha256:
                pulled_sha = pool.partition_manifest_sha(division_sha, partition)
                if request.manifest_sha256 != pulled_sha:
                    raise FailedPrecondition(
                        f"partition from {request.source} has manifest {pulled_sha}, not {request.manifest_sha256}"
                    )
            return self._host.load_from_pool(pool, division_sha, partition, expected)
        return self._host.load(Path(request.source), expected, request.manifest_sha256)

    @map_errors()
    async def LoadPartition(
        self, request: model_server_pb2.LoadPartitionRequest, context: grpc.aio.ServicerContext
    ) -> model_server_pb2.LoadPartitionResponse:
        if not request.source:
            raise InvalidArgument("LoadPartition needs a source: an artifact directory or pool://HOST:PORT/SHA/PART")
        loaded = await asyncio.to_thread(self._load, request)
        log.info("loaded partition %s from %s", loaded.key, request.source[:200])
        await asyncio.to_thread(self._on_change)
        return model_server_pb2.LoadPartitionResponse(
            hosted=_hosted(loaded, 0),
            inputs=[_spec(s) for s in loaded.inputs],
            outputs=[_spec(s) for s in loaded.outputs],
        )

    @map_errors()
    async def UnloadPartition(
        self, request: model_server_pb2.UnloadPartitionRequest, context: grpc.aio.ServicerContext
    ) -> model_server_pb2.UnloadPartitionResponse:
        was_loaded = self._host.unload(key_of(request.partition))
        await asyncio.to_thread(self._on_change)
        log.info("unloaded partition %s (was loaded: %s)", key_of(request.partition), was_loaded)
        return model_server_pb2.UnloadPartitionResponse(was_loaded=was_loaded)


def add_to_server(servicer: ModelServerServicer, server: grpc.aio.Server) -> None:
    """Registers ``servicer`` as ModelServerService: Process and ProcessOnce read and write their messages
    with :mod:`splitinfer.transport.frames` (payloads never copied into a protobuf), the other methods with
    their protobuf classes. Clients see the same protobuf messages either way."""
    identity = None  # the servicer returns serialized messages
    handlers = {
        "Process": grpc.stream_stream_rpc_method_handler(servicer.Process, parse_process_request, identity),
        "ProcessOnce": grpc.unary_unary_rpc_method_handler(servicer.ProcessOnce, parse_once_request, identity),
    }
    for name, request, response in (
        ("GetStatus", model_server_pb2.GetStatusRequest, model_server_pb2.GetStatusResponse),
        ("LoadPartition", model_server_pb2.LoadPartitionRequest, model_server_pb2.LoadPartitionResponse),
        ("UnloadPartition", model_server_pb2.UnloadPartitionRequest, model_server_pb2.UnloadPartitionResponse),
    ):
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request.FromString, response.SerializeToString
        )
    service = "splitinfer.v1.ModelServerService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]


def _spec(spec: ValueSpec) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(name=spec.name, dtype=from_torch(spec.dtype), shape=list(spec.shape))


def _hosted(partition: LoadedPartition, queued: int) -> model_server_pb2.HostedPartition:
    key = partition.key
    return model_server_pb2.HostedPartition(
        partition=route_pb2.PartitionRef(model=key.model, variant=key.variant, partition=key.partition),
        ready=True,
        queue_length=queued,
        parameter_bytes=partition.program.param_bytes,
        completed=partition.completed,
        mean_compute_ms=partition.mean_compute_ms,
        runtime=partition.runtime,
        fallback_reason=partition.fallback_reason,
        **_batching(partition),
    )


def _batching(partition: LoadedPartition) -> dict[str, int]:
    stats = partition.batch_stats
    if stats is None:
        return {}
    return {
        "batches": stats.batches,
        "batched_requests": stats.requests,
        "largest_batch_requests": stats.largest_batch_requests,
        "largest_batch_rows": stats.largest_batch_rows,
    }
