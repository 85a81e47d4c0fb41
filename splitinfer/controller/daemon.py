"""``splitinfer-divider``: the division controller as its own daemon.

Why a daemon of its own rather than part of the front-end: a cluster may run several front-ends, each seeing
part of the traffic, and the controller must weigh all of it (it polls every front-end's status); dividing
a model (export, ONNX export and check) takes seconds of CPU that must not compete with the request path;
and the cluster wants exactly one writer of divisions, which can restart without dropping a request.

It reads the live mix from the front-ends' ``FrontEndService.GetFrontEndStatus`` (requests per device class over their
sliding window), the live nodes from the registry, writes new divisions into the pool directory it shares with
the ModelPoolService, and loads and unloads partitions through the nodes' administrative RPCs (with the admin
identity when the cluster runs TLS).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from splitinfer.controller.activity import ClassActivity
from splitinfer.controller.controller import DivisionController
from splitinfer.controller.policy import ControllerConfig
from splitinfer.errors import SplitInferError
from splitinfer.pool import ModelPool
from splitinfer.registry import Registry
from splitinfer.runtime import PartitionKey
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.channel import open_channel
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc

__all__ = ["GrpcNodeOps", "RunningController", "merge_activity", "start_controller"]

log = logging.getLogger("splitinfer.controller")


class GrpcNodeOps:
    """Rollout operations over the nodes' gRPC API (LoadPartition, UnloadPartition, GetStatus)."""

    def __init__(self, security: ClientSecurity | None = None, timeout_s: float = 60.0) -> None:
        self._security = security
        self._timeout_s = timeout_s

    def load(self, address: str, source: str, key: str) -> None:
        with NodeClient(address, security=self._security) as client:
            client.load_partition(source, PartitionKey.parse(key), timeout_s=self._timeout_s)

    def unload(self, address: str, key: str) -> None:
        with NodeClient(address, security=self._security) as client:
            client.unload_partition(PartitionKey.parse(key), timeout_s=self._timeout_s)

    def queued(self, address: str) -> Mapping[str, int]:
        with NodeClient(address, security=self._security) as client:
            status = client.status(timeout_s=min(self._timeout_s, 10.0))
        return {
            f"{h.partition.model}@{h.partition.variant}/{h.partition.partition}": h.queue_length
            for h in status.partitions
        }


def merge_activity(reports: Sequence[Sequence[frontend_pb2.DeviceClassActivity]]) -> dict[str, ClassActivity]:
    """Several front-ends' windows as one mix: rates and counts add up; each class's figures are the
    request-weighted mean of the front-ends' medians."""
    merged: dict[str, list[frontend_pb2.DeviceClassActivity]] = {}
    for report in reports:
        for item in report:
            merged.setdefault(item.device_class, []).append(item)
    out = {}
    for name, items in sorted(merged.items()):
        count = sum(i.requests for i in items)
        weight = [max(i.requests, 1) for i in items]
        total = sum(weight)
        out[name] = ClassActivity(
            device_class=name,
            requests_per_s=sum(i.requests_per_s for i in items),
            requests=count,
            compute_flops=sum(w * i.compute_flops for w, i in zip(weight, items, strict=True)) / total,
            uplink_mbps=sum(w * i.uplink_mbps for w, i in zip(weight, items, strict=True)) / total,
            memory_bytes=0,  # devices do not report their memory; the planner assumes a typical device's
        )
    return out


def frontend_activity(
    addresses: Callable[[], Sequence[str]], security: ClientSecurity | None = None, timeout_s: float = 5.0
) -> Callable[[], dict[str, ClassActivity]]:
    """A source of the live mix: every front-end's status, merged. A front-end that does not answer is left
    out of this round (and logged)."""

    def read() -> dict[str, ClassActivity]:
        reports = []
        for address in addresses():
            channel = open_channel(address, security=security)
            try:
                stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
                status = stub.GetFrontEndStatus(frontend_pb2.GetFrontEndStatusRequest(), timeout=timeout_s)
                reports.append(list(status.activity))
            except grpc.RpcError as exc:
                log.warning("front-end %s did not report its activity: %s", address, exc.code())
            finally:
                channel.close()
        return merge_activity(reports)

    return read


@dataclass
class RunningController:
    controller: DivisionController
    thread: threading.Thread
    _stop: threading.Event

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.thread.join(timeout_s)


def start_controller(
    config: ControllerConfig,
    pool_dir: Path,
    registry: Registry,
    *,
    pool_address: str,
    frontends: Sequence[str] = (),
    security: ClientSecurity | None = None,
) -> RunningController:
    """Starts the control loop on a thread. ``frontends`` empty: every front-end the registry lists."""

    def addresses() -> Sequence[str]:
        return list(frontends) or sorted(registry.frontends())

    controller = DivisionController(
        config,
        ModelPool(pool_dir),
        servers=registry.servers,
        activity=frontend_activity(addresses, security),
        nodes=GrpcNodeOps(security, config.rpc_timeout_s),
        pool_address=pool_address,
    )
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                controller.step()
            except (SplitInferError, OSError) as exc:  # the loop must go on: the next pass retries
                log.warning("controller pass failed: %s", exc)
            stop.wait(config.interval_s)

    thread = threading.Thread(target=loop, name="division-controller", daemon=True)
    thread.start()
    return RunningController(controller, thread, stop)
