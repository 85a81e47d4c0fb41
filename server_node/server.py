"""A running server node: the ModelServer service plus health and reflection, started and stopped cleanly."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server_node.config import NodeConfig
from server_node.host import PartitionHost
from server_node.servicer import ModelServerServicer
from splitinfer.runtime.compute import measure_flops
from splitinfer.transport.channel import new_server
from splitinfer.v1 import model_server_pb2, model_server_pb2_grpc

__all__ = ["RunningNode", "start_node"]

log = logging.getLogger("splitinfer.server")
SERVICE_NAME = model_server_pb2.DESCRIPTOR.services_by_name["ModelServerService"].full_name


@dataclass
class RunningNode:
    server: grpc.Server
    servicer: ModelServerServicer
    host: PartitionHost
    health: health.HealthServicer
    port: int
    address: str
    config: NodeConfig

    def stop(self, grace_s: float | None = None) -> None:
        """Stops accepting calls, lets in-flight requests finish for up to ``grace_s``, then closes."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.shutdown_grace_s if grace_s is None else grace_s).wait()
        self.servicer.forwarder.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_node(config: NodeConfig) -> RunningNode:
    """Binds, benchmarks compute, registers the services and starts serving."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    server = new_server(config.grpc_workers, config.max_message_bytes)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    address = config.advertise_address or f"{config.host}:{port}"
    host = PartitionHost(compute_slots=config.compute_slots, max_in_flight=config.max_in_flight)
    servicer = ModelServerServicer(config, host, address, measure_flops(config.benchmark_s))
    model_server_pb2_grpc.add_ModelServerServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info("server node serving at %s", address)
    return RunningNode(server, servicer, host, health_servicer, port, address, config)
