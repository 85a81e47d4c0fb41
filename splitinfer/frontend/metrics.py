"""Prometheus metrics of the front door (its own registry, so that several front-ends can share a process)."""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from splitinfer.controller.activity import ActivityWindow
from splitinfer.transport.status import map_errors

__all__ = ["FrontEndMetrics", "instrument"]


class FrontEndMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._activity: ActivityWindow | None = None
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

    def watch_activity(self, window: ActivityWindow) -> None:
        """Exports ``window``'s rates as ``splitinfer_frontend_device_class_requests_per_second{device_class}``,
        read at each scrape."""
        if self._activity is None:
            self._activity = window
            self.registry.register(_ActivityCollector(window))

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


class _ActivityCollector(Collector):
    def __init__(self, window: ActivityWindow) -> None:
        self._window = window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "splitinfer_frontend_device_class_requests_per_second",
            "Requests per second from each device class over the activity window (what divisions follow).",
            labels=["device_class"],
        )
        for activity in self._window.snapshot().values():
            family.add_metric([activity.device_class], activity.requests_per_s)
        yield family
