"""The ModelServerService servicer: decode, check, apply the deadline, call the executor, map errors."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil

from server_node.config import NodeConfig
from server_node.executor import CallScope, RequestExecutor, key_of
from server_node.forwarder import GrpcForwarder
from server_node.host import PartitionHost
from server_node.metrics import NodeMetrics
from splitinfer.codecs import CodecSpec, DecodeLimits, TensorAssembler
from splitinfer.codecs.dtypes import from_torch
from splitinfer.errors import FailedPrecondition, InvalidArgument, SplitInferError
from splitinfer.pool.service import POOL_SCHEME, pull_partition
from splitinfer.program import ValueSpec
from splitinfer.routing import ReplicaBalancer
from splitinfer.runtime import LoadedPartition
from splitinfer.transport.status import abort, status_for
from splitinfer.transport.stream import stream_messages
from splitinfer.v1 import model_server_pb2, model_server_pb2_grpc, route_pb2, tensor_pb2

__all__ = ["ModelServerServicer"]

log = logging.getLogger("splitinfer.server")


class ModelServerServicer(model_server_pb2_grpc.ModelServerServiceServicer):
    def __init__(
        self,
        config: NodeConfig,
        host: PartitionHost,
        address: str,
        compute_flops: float,
        balancer: ReplicaBalancer,
        on_change: Callable[[], None] = lambda: None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._on_change = on_change
        self.metrics = metrics or NodeMetrics()
        self._config = config
        self._host = host
        self.address = address
        self._flops = compute_flops
        self._started = time.monotonic()
        self._limits = DecodeLimits(max_tensor_bytes=config.max_tensor_bytes)
        self.forwarder = GrpcForwarder(config.chunk_bytes, config.max_message_bytes, balancer)
        self.executor = RequestExecutor(
            host,
            address,
            self.forwarder,
            self._limits,
            join_timeout_s=config.join_timeout_s,
            slowdown_factor=config.slowdown_factor,
        )
        self._cache_dir = Path(config.cache_dir or tempfile.mkdtemp(prefix="splitinfer-node-cache-"))

    def Process(
        self, request_iterator: Iterator[model_server_pb2.ProcessRequest], context: grpc.ServicerContext
    ) -> Iterator[model_server_pb2.ProcessResponse]:
        request_id = "?"
        self.metrics.requests.labels("Process").inc()
        try:
            with self._host.admit():
                header, received = self._read_request(request_iterator)
                request_id = header.request_id
                timings = []
                for item in self._execute(header, received, context):
                    if isinstance(item, model_server_pb2.StepTiming):
                        timings.append(item)
                    else:
                        self._count_bytes("out", item)
                        yield from stream_messages(model_server_pb2.ProcessResponse, [item], self._config.chunk_bytes)
                yield model_server_pb2.ProcessResponse(done=model_server_pb2.ProcessDone(timings=timings))
        except SplitInferError as exc:
            log.info("request %s refused: %s", request_id, exc)
            self.metrics.errors.labels(status_for(exc).name).inc()
            abort(context, exc)

    def ProcessOnce(
        self, request: model_server_pb2.ProcessOnceRequest, context: grpc.ServicerContext
    ) -> model_server_pb2.ProcessOnceResponse:
        self.metrics.requests.labels("ProcessOnce").inc()
        try:
            with self._host.admit():
                if not request.HasField("header"):
                    raise InvalidArgument("ProcessOnce needs a header")
                assembler = TensorAssembler(self._limits)
                received: dict[str, tensor_pb2.Tensor] = {}
                for tensor in request.tensors:
                    complete = assembler.add(tensor)
                    if complete is None:
                        raise InvalidArgument(
                            f"tensor {tensor.name!r} is incomplete; stream large tensors with Process"
                        )
                    received[complete.name] = complete
                    self._count_bytes("in", complete)
                response = model_server_pb2.ProcessOnceResponse()
                for item in self._execute(request.header, received, context):
                    if isinstance(item, model_server_pb2.StepTiming):
                        response.done.timings.append(item)
                    else:
                        self._count_bytes("out", item)
                        response.tensors.append(item)
                return response
        except SplitInferError as exc:
            log.info("request %s refused: %s", request.header.request_id or "?", exc)
            self.metrics.errors.labels(status_for(exc).name).inc()
            abort(context, exc)

    def _count_bytes(self, direction: str, tensor: tensor_pb2.Tensor) -> None:
        codec = str(CodecSpec.from_proto(tensor.encoding))
        self.metrics.bytes.labels(direction, codec).inc(tensor.payload_size_bytes)

    def _execute(
        self,
        header: model_server_pb2.RequestHeader,
        received: dict[str, tensor_pb2.Tensor],
        context: grpc.ServicerContext,
    ) -> Iterator[tensor_pb2.Tensor | model_server_pb2.StepTiming]:
        """The executor's output for one request, with its deadline applied and its cancellation wired."""
        timeout_s = _remaining_s(header.timeout_ms, context.time_remaining())
        scope = CallScope()
        context.add_callback(scope.cancel)  # caller gone: cancel what this request sent downstream
        self.metrics.in_flight.inc()
        try:
            for item in self.executor.execute(header, received, timeout_s, scope):
                if not context.is_active():
                    log.info("request %s cancelled by the caller; dropping it", header.request_id)
                    scope.cancel()
                    return
                if isinstance(item, model_server_pb2.StepTiming) and item.node == self.address:
                    name = str(key_of(item.partition))
                    self.metrics.compute_seconds.labels(name).observe(item.compute_ms / 1e3)
                    self.metrics.queue_seconds.labels(name).observe(item.queue_ms / 1e3)
                yield item
        finally:
            self.metrics.in_flight.dec()

    def _read_request(
        self, request_iterator: Iterator[model_server_pb2.ProcessRequest]
    ) -> tuple[model_server_pb2.RequestHeader, dict[str, tensor_pb2.Tensor]]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise InvalidArgument("a Process stream must start with a header")
        assembler = TensorAssembler(self._limits)
        received: dict[str, tensor_pb2.Tensor] = {}
        for message in request_iterator:
            kind = message.WhichOneof("kind")
            if kind == "header" or kind is None:
                raise InvalidArgument("a Process stream carries one header, first, and then only tensors")
            complete = assembler.add(getattr(message, kind))
            if complete is not None:
                received[complete.name] = complete
                self._count_bytes("in", complete)
        assembler.finish()
        return first.header, received

    def GetStatus(
        self, request: model_server_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> model_server_pb2.GetStatusResponse:
        memory = psutil.virtual_memory()
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
        )

    def LoadPartition(
        self, request: model_server_pb2.LoadPartitionRequest, context: grpc.ServicerContext
    ) -> model_server_pb2.LoadPartitionResponse:
        try:
            if not request.source:
                raise InvalidArgument(
                    "LoadPartition needs a source: an artifact directory or pool://HOST:PORT/SHA/PART"
                )
            expected = key_of(request.partition) if request.partition.model else None
            source, manifest_sha = Path(request.source), request.manifest_sha256
            if request.source.startswith(POOL_SCHEME):
                source, pulled_sha = pull_partition(request.source, self._cache_dir)
                if manifest_sha and manifest_sha != pulled_sha:
                    raise FailedPrecondition(
                        f"partition from {request.source} has manifest {pulled_sha}, not {manifest_sha}"
                    )
                manifest_sha = pulled_sha
            loaded = self._host.load(source, expected, manifest_sha)
        except SplitInferError as exc:
            abort(context, exc)
        log.info("loaded partition %s from %s", loaded.key, request.source)
        self._on_change()
        return model_server_pb2.LoadPartitionResponse(
            hosted=_hosted(loaded, 0),
            inputs=[_spec(s) for s in loaded.inputs],
            outputs=[_spec(s) for s in loaded.outputs],
        )

    def UnloadPartition(
        self, request: model_server_pb2.UnloadPartitionRequest, context: grpc.ServicerContext
    ) -> model_server_pb2.UnloadPartitionResponse:
        was_loaded = self._host.unload(key_of(request.partition))
        self._on_change()
        log.info("unloaded partition %s (was loaded: %s)", key_of(request.partition), was_loaded)
        return model_server_pb2.UnloadPartitionResponse(was_loaded=was_loaded)


def _remaining_s(header_timeout_ms: int, grpc_remaining: float | None) -> float | None:
    """The tighter of the deadline the header carries and the one gRPC enforces on this call."""
    candidates = [t for t in (header_timeout_ms / 1e3 if header_timeout_ms else None, grpc_remaining) if t]
    return min(candidates) if candidates else None


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
    )
