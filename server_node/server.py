"""A running server node: the ModelServer service plus health and reflection on ``grpc.aio``, registry
membership, and a clean start and stop, usable from synchronous code.

``start_node(config, registry=None, compute_hook=None)`` runs the aio server on its own event-loop thread and
returns a :class:`RunningNode` (tests, the demo and the cluster drive it synchronously); ``stop()`` is
graceful. Health checks, GetStatus and Load/UnloadPartition are exempt from the data-plane stream caps, so
they keep being answered while the data plane is full.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AioHealthServicer  # what health.aio re-exports

from server_node.compute import ComputeHook, ComputePool, compute_threads
from server_node.config import NodeConfig
from server_node.host import PartitionHost
from server_node.metrics import NodeMetrics
from server_node.servicer import ModelServerServicer, add_to_server
from server_node.trust import RouteTrust
from splitinfer.registry import Registration, Registry, ServerRecord, connect
from splitinfer.routing import ReplicaBalancer
from splitinfer.runtime.compute import measure_flops
from splitinfer.security.tls import server_security_from_dir
from splitinfer.transport.aio_server import DEFAULT_EXEMPT_METHODS, ServerLimits, StreamLimiter, new_aio_server
from splitinfer.transport.channel import bind
from splitinfer.transport.reflection import enable_reflection
from splitinfer.v1 import model_server_pb2

__all__ = ["PARTITION_HEALTH_PREFIX", "RunningNode", "start_node"]

log = logging.getLogger("splitinfer.server")
SERVICE_NAME = model_server_pb2.DESCRIPTOR.services_by_name["ModelServerService"].full_name
#: Health service name of a hosted partition: "splitinfer.partition/model@variant/partition".
PARTITION_HEALTH_PREFIX = "splitinfer.partition/"
#: Control-plane methods: never counted against the data-plane stream caps.
CONTROL_METHODS = tuple(f"/{SERVICE_NAME}/{m}" for m in ("GetStatus", "LoadPartition", "UnloadPartition"))
T = TypeVar("T")


@dataclass
class RunningNode:
    server: grpc.aio.Server
    servicer: ModelServerServicer
    host: PartitionHost
    health: AioHealthServicer
    port: int
    address: str
    config: NodeConfig
    compute_flops: float
    loop: asyncio.AbstractEventLoop
    limiter: StreamLimiter
    registry: Registry | None = None
    #: Port of the Prometheus /metrics endpoint (None when disabled).
    metrics_port: int | None = None
    _thread: threading.Thread | None = None
    _registration: Registration | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _published: set[str] = field(default_factory=set)
    _publish_lock: threading.Lock = field(default_factory=threading.Lock)

    def on_loop(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = 30.0) -> T:
        """Runs ``coro`` on the node's event loop from another thread and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def record(self) -> ServerRecord:
        hosted = self.host.hosted()
        return ServerRecord(
            address=self.address,
            partitions=tuple(sorted(str(p.key) for p, _ in hosted)),
            in_flight=self.host.in_flight,
            queue_lengths={str(p.key): q for p, q in hosted},
            compute_flops=self.compute_flops,
            memory_available_bytes=psutil.virtual_memory().available,
            device="cpu",
            updated_unix_s=time.time(),
            metrics_port=self.metrics_port or 0,
            max_batch_size=self.config.max_batch_size,
            max_queue_delay_ms=self.config.max_queue_delay_ms,
        )

    def publish(self) -> None:
        """Brings per-partition health and the registry record up to date with what is hosted."""
        with self._publish_lock:
            current = {str(p.key) for p, _ in self.host.hosted()}
            changes = [(n, health_pb2.HealthCheckResponse.SERVING) for n in current - self._published]
            changes += [(n, health_pb2.HealthCheckResponse.NOT_SERVING) for n in self._published - current]
            self._published = current
        if changes and not self._stop.is_set():

            async def apply() -> None:
                for name, status in changes:
                    await self.health.set(PARTITION_HEALTH_PREFIX + name, status)

            self.on_loop(apply())
        if self._registration is not None:
            self._registration.update(self.record())

    def _status_loop(self) -> None:
        while not self._stop.wait(self.config.status_interval_s):
            try:
                self.publish()
            except Exception as exc:
                log.warning("status refresh failed: %s", exc)

    async def _shutdown(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await self.servicer.forwarder.close()

    def stop(self, grace_s: float | None = None) -> None:
        """Leaves the registry, stops accepting calls, lets in-flight requests finish for up to
        ``grace_s``, then closes."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._registration is not None:
            self._registration.close()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        try:
            self.on_loop(self._shutdown(grace), timeout_s=grace + 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self.servicer.pool.close()
            if self.registry is not None:
                self.registry.close()

    def wait(self) -> None:
        """Blocks until the node has stopped."""
        if self._thread is not None:
            self._thread.join()


def start_node(
    config: NodeConfig, registry: Registry | None = None, compute_hook: ComputeHook | None = None
) -> RunningNode:
    """Binds, benchmarks compute, registers the services, joins the registry and starts serving.

    ``registry`` overrides ``config.registry`` (the embedded registry is passed this way in-process).
    ``compute_hook`` is for emulation only (``splitinfer.testbed.Slowdown``).
    """
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if registry is None and config.registry:
        registry = connect(config.registry)
    security = server_security_from_dir(Path(config.tls_dir), require_client_cert=True) if config.tls_dir else None
    measured = measure_flops(config.benchmark_s)
    flops = compute_hook.reported_flops(measured) if compute_hook is not None else measured
    pool = ComputePool(compute_threads(config.compute_slots, config.torch_threads), compute_hook)
    host = PartitionHost(
        max_in_flight=config.max_in_flight, queue_length=pool.queue_length, runtime=config.runtime_options()
    )
    limits = ServerLimits(
        max_message_bytes=config.max_message_bytes,
        max_streams=config.max_streams,
        max_streams_per_peer=config.max_streams_per_peer,
        max_concurrent_rpcs=config.max_streams + 256,
        exempt_methods=(*DEFAULT_EXEMPT_METHODS, *CONTROL_METHODS),
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="node-loop", daemon=True)
    thread.start()
    # Tiny partitions run on the loop (ComputePool.run_here): grad mode off on its thread for good
    # (thread-local; nothing on a node's loop uses autograd), so that no run pays for a no_grad context.
    loop.call_soon_threadsafe(torch.set_grad_enabled, False)

    metrics = NodeMetrics()

    async def serve() -> tuple[grpc.aio.Server, StreamLimiter, int, AioHealthServicer]:
        refused = metrics.errors.labels(grpc.StatusCode.RESOURCE_EXHAUSTED.name)
        server, limiter = new_aio_server(limits, security, on_refused=refused.inc)
        port = bind(server, f"{config.host}:{config.port}", security)
        if port == 0:
            raise OSError(f"could not bind {config.host}:{config.port}")
        health_servicer = AioHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection(server, (SERVICE_NAME,))
        return server, limiter, port, health_servicer

    try:
        server, limiter, port, health_servicer = asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        pool.close()
        raise
    address = config.advertise_address or f"{config.host}:{port}"

    def reported_load(peer: str) -> float:
        record = registry.servers().get(peer) if registry is not None else None
        return float(record.in_flight) if record is not None else 0.0

    balancer = ReplicaBalancer(cooldown_s=config.replica_cooldown_s, reported_load=reported_load)
    trust = RouteTrust(registry, address, tls=security is not None)
    node_ref: list[RunningNode] = []
    servicer = ModelServerServicer(
        config,
        host,
        address,
        flops,
        balancer,
        pool,
        trust,
        on_change=lambda: node_ref[0].publish() if node_ref else None,
        metrics=metrics,
        limiter=limiter,
    )

    async def start() -> None:
        add_to_server(servicer, server)
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    node = RunningNode(
        server, servicer, host, health_servicer, port, address, config, flops, loop, limiter, registry, _thread=thread
    )
    if config.metrics_port >= 0:
        node.metrics_port = servicer.metrics.serve(config.metrics_port, config.host)
    node_ref.append(node)
    if registry is not None:
        node._registration = registry.register(node.record(), config.registry_ttl_s)
        threading.Thread(target=node._status_loop, name="status", daemon=True).start()
    log.info("server node serving at %s%s", address, f" (registry {config.registry})" if config.registry else "")
    return node
