"""Prometheus metrics of the front door (its own registry, so that several front-ends can share a process)."""

from __future__ import annotations

import types
from collections.abc import Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from splitinfer.transport.status import map_errors

__all__ = ["FrontEndMetrics", "instrument"]


class FrontEndMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "splitinfer_frontend_requests", "Requests received, by front door (frontend, oip) and RPC.",
            ["door", "rpc"], registry=self.registry,
        )  # fmt: skip
        self.failures = Counter(
            "splitinfer_frontend_request_failures", "Requests that failed or were refused, by door, RPC and gRPC code.",
            ["door", "rpc", "code"], registry=self.registry,
        )  # fmt: skip
        self.recalled = Counter(
            "splitinfer_frontend_results_recalled", "Retries answered with the stored result instead of a run.",
            registry=self.registry,
        )  # fmt: skip
        self.run_seconds = Histogram(
            "splitinfer_frontend_run_seconds", "Time running a request's server part (route and store).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )  # fmt: skip

    def count_failure(self, door: str, rpc: str, code: grpc.StatusCode) -> None:
        self.failures.labels(door, rpc, code.name).inc()

    def failure_count(self, code: str, door: str = "", rpc: str = "") -> float:
        """Failures so far with gRPC code ``code`` (e.g. "INVALID_ARGUMENT"), optionally of one door / RPC."""
        total = 0.0
        for metric in self.failures.collect():
            for sample in metric.samples:
                labels = sample.labels
                if not sample.name.endswith("_total") or labels.get("code") != code:
                    continue
                if (door and labels.get("door") != door) or (rpc and labels.get("rpc") != rpc):
                    continue
                total += sample.value
        return total

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serves /metrics over HTTP; returns the bound port (``port`` 0 picks a free one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)


def instrument(servicer: object, metrics: FrontEndMetrics, door: str, rpcs: Iterable[str]) -> None:
    """Wraps each of ``servicer``'s methods ``rpcs`` in the one error mapping (:func:`map_errors`), with
    every failed call counted in ``metrics`` under its door, RPC and code. The servicer's methods then raise
    domain errors and never call ``abort`` themselves."""
    for rpc in rpcs:
        function = getattr(type(servicer), rpc)

        def hook(code: grpc.StatusCode, rpc: str = rpc) -> None:
            metrics.count_failure(door, rpc, code)

        setattr(servicer, rpc, types.MethodType(map_errors(on_failure=hook)(function), servicer))
