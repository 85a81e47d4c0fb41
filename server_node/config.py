"""Server node configuration: one frozen dataclass, units in names, every limit explicit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitinfer.config import load_config

__all__ = ["NodeConfig"]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    #: Interface to bind.
    host: str = "127.0.0.1"
    #: Port to bind; 0 picks a free one (read it back from the started server or --port-file).
    port: int = 0
    #: Address other nodes and clients use to reach this one; defaults to host:bound-port.
    advertise_address: str = ""
    #: gRPC worker threads (concurrent calls).
    grpc_workers: int = 16
    #: Partitions run at once on this node; more requests wait in the queue.
    compute_slots: int = 1
    #: Requests admitted at once (running or queued); beyond that the node answers RESOURCE_EXHAUSTED.
    max_in_flight: int = 64
    #: torch intra-op threads; 0 leaves torch's default.
    torch_threads: int = 0
    #: Largest single gRPC message, in bytes.
    max_message_bytes: int = 64 << 20
    #: Largest decoded tensor accepted from a peer, in bytes.
    max_tensor_bytes: int = 1 << 30
    #: Payload bytes per chunk when sending large tensors.
    chunk_bytes: int = 512 << 10
    #: Seconds that shutdown waits for in-flight requests.
    shutdown_grace_s: float = 10.0
    #: Longest a join waits for the inputs of a step that arrive from other nodes, seconds.
    join_timeout_s: float = 30.0
    #: Seconds a replica that refused a call is avoided.
    replica_cooldown_s: float = 5.0
    #: Registry endpoint ("etcd://host:port[,host:port]"); empty: do not register.
    registry: str = ""
    #: Lease time-to-live in the registry, seconds: a dead node disappears within it.
    registry_ttl_s: float = 5.0
    #: How often the node refreshes its status in the registry, seconds.
    status_interval_s: float = 1.0
    #: Port of the Prometheus /metrics endpoint: -1 disables it, 0 picks a free port.
    metrics_port: int = -1
    #: Where partitions pulled from a remote pool are cached (a temporary directory when empty).
    cache_dir: str = ""
    #: Emulated slowness: each partition run is stretched to this many times its real duration (>= 1).
    #: For demos and tests of heterogeneous clusters on one machine; reported compute_flops is divided by it.
    slowdown_factor: float = 1.0
    #: Seconds of the start-up compute microbenchmark (0 skips it and reports 0 FLOP/s).
    benchmark_s: float = 0.2
    #: Directory with ca.pem, server.pem/key and cluster.pem/key (``make certs``): serve mutual TLS and
    #: check every caller's role. Empty: plaintext, no authentication (development only).
    tls_dir: str = ""

    @classmethod
    def from_file(cls, path: Path) -> NodeConfig:
        """Reads a JSON object whose keys are field names; unknown keys are an error."""
        return load_config(cls, path)
