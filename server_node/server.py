"""A running server node: the ModelServer service plus health and reflection, registry membership, and a
clean start and stop."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server_node.config import NodeConfig
from server_node.host import PartitionHost
from server_node.servicer import ModelServerServicer
from splitinfer.registry import Registration, Registry, ServerRecord, connect
from splitinfer.routing import ReplicaBalancer
from splitinfer.runtime.compute import measure_flops
from splitinfer.security.tls import server_security_from_dir
from splitinfer.transport.channel import bind, new_server
from splitinfer.v1 import model_server_pb2, model_server_pb2_grpc

__all__ = ["PARTITION_HEALTH_PREFIX", "RunningNode", "start_node"]

log = logging.getLogger("splitinfer.server")
SERVICE_NAME = model_server_pb2.DESCRIPTOR.services_by_name["ModelServerService"].full_name
#: Health service name of a hosted partition: "splitinfer.partition/model@variant/partition".
PARTITION_HEALTH_PREFIX = "splitinfer.partition/"


@dataclass
class RunningNode:
    server: grpc.Server
    servicer: ModelServerServicer
    host: PartitionHost
    health: health.HealthServicer
    port: int
    address: str
    config: NodeConfig
    compute_flops: float
    registry: Registry | None = None
    #: Port of the Prometheus /metrics endpoint (None when disabled).
    metrics_port: int | None = None
    _registration: Registration | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _published: set[str] = field(default_factory=set)
    _publish_lock: threading.Lock = field(default_factory=threading.Lock)

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
        )

    def publish(self) -> None:
        """Brings per-partition health and the registry record up to date with what is hosted."""
        with self._publish_lock:
            current = {str(p.key) for p, _ in self.host.hosted()}
            for name in current - self._published:
                self.health.set(PARTITION_HEALTH_PREFIX + name, health_pb2.HealthCheckResponse.SERVING)
            for name in self._published - current:
                self.health.set(PARTITION_HEALTH_PREFIX + name, health_pb2.HealthCheckResponse.NOT_SERVING)
            self._published = current
        if self._registration is not None:
            self._registration.update(self.record())

    def _status_loop(self) -> None:
        while not self._stop.wait(self.config.status_interval_s):
            try:
                self.publish()
            except Exception as exc:
                log.warning("status refresh failed: %s", exc)

    def stop(self, grace_s: float | None = None) -> None:
        """Leaves the registry, stops accepting calls, lets in-flight requests finish for up to
        ``grace_s``, then closes."""
        self._stop.set()
        if self._registration is not None:
            self._registration.close()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.shutdown_grace_s if grace_s is None else grace_s).wait()
        self.servicer.forwarder.close()
        if self.registry is not None:
            self.registry.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_node(config: NodeConfig, registry: Registry | None = None) -> RunningNode:
    """Binds, benchmarks compute, registers the services, joins the registry and starts serving.

    ``registry`` overrides ``config.registry`` (the embedded registry is passed this way in-process).
    """
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if registry is None and config.registry:
        registry = connect(config.registry)
    security = server_security_from_dir(Path(config.tls_dir), require_client_cert=True) if config.tls_dir else None
    server = new_server(config.grpc_workers, config.max_message_bytes, security)
    port = bind(server, f"{config.host}:{config.port}", security)
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    address = config.advertise_address or f"{config.host}:{port}"
    host = PartitionHost(compute_slots=config.compute_slots, max_in_flight=config.max_in_flight)

    def reported_load(peer: str) -> float:
        record = registry.servers().get(peer) if registry is not None else None
        return float(record.in_flight) if record is not None else 0.0

    balancer = ReplicaBalancer(cooldown_s=config.replica_cooldown_s, reported_load=reported_load)
    if config.slowdown_factor < 1:
        raise ValueError(f"slowdown_factor must be >= 1, got {config.slowdown_factor}")
    flops = measure_flops(config.benchmark_s) / config.slowdown_factor
    node_ref: list[RunningNode] = []
    servicer = ModelServerServicer(
        config, host, address, flops, balancer, on_change=lambda: node_ref[0].publish() if node_ref else None
    )
    model_server_pb2_grpc.add_ModelServerServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    server.start()
    node = RunningNode(server, servicer, host, health_servicer, port, address, config, flops, registry)
    if config.metrics_port >= 0:
        node.metrics_port = servicer.metrics.serve(config.metrics_port, config.host)
    node_ref.append(node)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    if registry is not None:
        node._registration = registry.register(node.record(), config.registry_ttl_s)
        threading.Thread(target=node._status_loop, name="status", daemon=True).start()
    log.info("server node serving at %s%s", address, f" (registry {config.registry})" if config.registry else "")
    return node
