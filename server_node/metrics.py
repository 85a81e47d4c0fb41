"""Prometheus metrics of one server node (its own registry, so that several nodes can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["NodeMetrics"]


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("splitinfer_requests", "Requests received, by RPC.", ["rpc"], registry=self.registry)
        self.errors = Counter(
            "splitinfer_request_errors", "Requests refused or failed, by gRPC status code.", ["code"],
            registry=self.registry,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "splitinfer_partition_compute_seconds", "Time running a partition.", ["partition"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "splitinfer_partition_queue_seconds", "Time waiting for a compute slot.", ["partition"],
            buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0), registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge("splitinfer_in_flight", "Requests admitted and not finished.", registry=self.registry)
        self.bytes = Counter(
            "splitinfer_tensor_bytes", "Encoded tensor payload bytes, by direction and codec.",
            ["direction", "codec"], registry=self.registry,
        )  # fmt: skip

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serves /metrics over HTTP; returns the bound port (``port`` 0 picks a free one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
