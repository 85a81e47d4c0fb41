"""Server node configuration: one frozen dataclass, units in names, every limit explicit, checked on load.

Contradictions are refused when the config is built or read (``NodeConfig(...)``, ``from_file``), not at
run time: e.g. ``max_in_flight`` above ``max_streams`` (admission could never trigger), a per-peer cap above
the total, non-positive timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from splitinfer.config import load_config

if TYPE_CHECKING:
    from splitinfer.runtime import RuntimeOptions

__all__ = ["NodeConfig"]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    #: Interface to bind.
    host: str = "127.0.0.1"
    #: Port to bind; 0 picks a free one (read it back from the started server or --port-file).
    port: int = 0
    #: Address other nodes and clients use to reach this one; defaults to host:bound-port.
    advertise_address: str = ""
    #: Partitions run at once on this node (threads of the compute pool); 0: one per torch_threads cores.
    compute_slots: int = 0
    #: Requests admitted at once (reading, queued, running or forwarding); beyond that RESOURCE_EXHAUSTED.
    max_in_flight: int = 64
    #: Data-plane streams (Process, ProcessOnce) open at once, idle ones included; beyond: RESOURCE_EXHAUSTED.
    max_streams: int = 2048
    #: Data-plane streams open at once from one peer (IP address).
    max_streams_per_peer: int = 1024
    #: Seconds a Process stream may take to send its header; then the node closes it (DEADLINE_EXCEEDED).
    first_message_timeout_s: float = 5.0
    #: Seconds a Process stream may stay silent between two messages; then the node closes it.
    idle_timeout_s: float = 10.0
    #: Longest a request may run, seconds: a header with timeout_ms 0 (none) or above this is clamped to it.
    max_timeout_s: float = 300.0
    #: Most steps a route may have.
    max_route_steps: int = 64
    #: Most consumer steps one output (and one step, all outputs together) may feed.
    max_fanout: int = 16
    #: Most payload bytes one request may send to this node; 0: what its step's inputs need (raw size,
    #: plus the small overhead a compressed payload can add).
    max_request_bytes: int = 0
    #: Payload and decoded bytes of all requests in flight together; beyond it RESOURCE_EXHAUSTED.
    max_in_flight_bytes: int = 4 << 30
    #: torch intra-op threads; 0 leaves torch's default.
    torch_threads: int = 0
    #: Engine for partitions: "onnxruntime" (partitions without an ONNX twin fall back to the interpreter) or
    #: "interpreter" (the reference: every partition on splitinfer's ATen interpreter).
    runtime: str = "onnxruntime"
    #: onnxruntime execution providers in order of preference, comma-separated: cpu, cuda, tensorrt. A
    #: provider this machine lacks makes loading fail with FAILED_PRECONDITION naming it.
    execution_providers: str = "cpu"
    #: onnxruntime intra-op threads per partition run; 0: onnxruntime's default (one per physical core).
    intra_op_threads: int = 1
    #: onnxruntime inter-op threads (parallel branches of one graph); 0: onnxruntime's default.
    inter_op_threads: int = 1
    #: Whether onnxruntime's idle threads spin waiting for work (off: spinning steals 1-2 core hosts' cores).
    ort_spinning: bool = False
    #: Dynamic batching: most rows one run of a partition with a symbolic batch dimension takes; 1: off.
    max_batch_size: int = 1
    #: Dynamic batching: longest a request waits for others to join its batch, milliseconds.
    max_queue_delay_ms: float = 2.0
    #: Largest single gRPC message, in bytes.
    max_message_bytes: int = 64 << 20
    #: Largest decoded tensor accepted from a peer, in bytes.
    max_tensor_bytes: int = 1 << 30
    #: Payload bytes per chunk when sending large tensors (splitinfer.codecs.DEFAULT_CHUNK_BYTES, measured).
    chunk_bytes: int = 1 << 20
    #: Seconds that shutdown waits for in-flight requests.
    shutdown_grace_s: float = 10.0
    #: Longest a join waits for the inputs of a step that arrive from other nodes, seconds.
    join_timeout_s: float = 30.0
    #: Seconds a replica that refused a call is avoided.
    replica_cooldown_s: float = 5.0
    #: Replicas tried at most per forwarded call.
    forward_attempts: int = 3
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
    #: Seconds of the start-up compute microbenchmark (0 skips it and reports 0 FLOP/s).
    benchmark_s: float = 0.2
    #: glibc malloc: allocations at least this large are served by mmap (fresh pages, faulted in and zeroed
    #: on every request) instead of the heap; 0 keeps glibc's default (128 KiB, dynamic). Applied by the
    #: splitinfer-server daemon at start (server_node.allocator); the benchmarks' raw baselines use the same.
    malloc_mmap_threshold_bytes: int = 256 << 20
    #: glibc malloc: free heap memory above this is returned to the kernel; 0 keeps glibc's default (128 KiB,
    #: dynamic). Up to this much freed memory stays in the node's RSS after a burst of large requests.
    malloc_trim_threshold_bytes: int = 1 << 30
    #: glibc malloc: at most this many arenas; 0 keeps glibc's default (8 per core). With 1 every thread
    #: allocates from the main heap, where the two thresholds above hold: other arenas are unmapped when
    #: empty, and a large tensor allocated on the event loop or a compute thread was faulted in per request.
    malloc_arena_max: int = 1
    #: Directory with ca.pem, server.pem/key and cluster.pem/key (``make certs``): serve mutual TLS and
    #: check every caller's role. Empty: plaintext, no authentication (development only).
    tls_dir: str = ""

    def __post_init__(self) -> None:
        problems = []
        positive = (
            "max_in_flight", "max_streams", "max_streams_per_peer", "first_message_timeout_s", "idle_timeout_s",
            "max_timeout_s", "max_route_steps", "max_fanout", "max_in_flight_bytes", "max_message_bytes",
            "max_tensor_bytes", "chunk_bytes", "join_timeout_s", "forward_attempts", "registry_ttl_s",
            "status_interval_s",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "compute_slots", "torch_threads", "max_request_bytes", "benchmark_s", "shutdown_grace_s",
            "intra_op_threads", "inter_op_threads", "max_queue_delay_ms", "malloc_mmap_threshold_bytes",
            "malloc_trim_threshold_bytes", "malloc_arena_max",
        ):  # fmt: skip
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_in_flight > self.max_streams:
            problems.append(
                f"max_in_flight ({self.max_in_flight}) > max_streams ({self.max_streams}): admission control "
                "could never trigger"
            )
        if self.max_streams_per_peer > self.max_streams:
            problems.append(f"max_streams_per_peer ({self.max_streams_per_peer}) > max_streams ({self.max_streams})")
        if self.chunk_bytes >= self.max_message_bytes:
            problems.append(f"chunk_bytes ({self.chunk_bytes}) must be below max_message_bytes")
        if not -1 <= self.metrics_port <= 65535 or not 0 <= self.port <= 65535:
            problems.append("port must be in 0..65535 and metrics_port in -1..65535")
        if self.runtime not in ("onnxruntime", "interpreter"):
            problems.append(f"runtime must be 'onnxruntime' or 'interpreter', got {self.runtime!r}")
        providers = [p.strip() for p in self.execution_providers.split(",") if p.strip()]
        unknown = [p for p in providers if p not in ("cpu", "cuda", "tensorrt")]
        if not providers or unknown:
            problems.append(f"execution_providers must list cpu, cuda or tensorrt, got {self.execution_providers!r}")
        for name in ("malloc_mmap_threshold_bytes", "malloc_trim_threshold_bytes", "malloc_arena_max"):
            if getattr(self, name) >= 1 << 31:
                problems.append(f"{name} must be below 2 GiB (mallopt takes an int), got {getattr(self, name)}")
        if self.max_batch_size < 1:
            problems.append(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if problems:
            raise ValueError("invalid NodeConfig: " + "; ".join(problems))

    def runtime_options(self) -> RuntimeOptions:
        """How this node runs partitions (engine, onnxruntime providers and threads, batching)."""
        from splitinfer.runtime import OrtOptions, RuntimeOptions

        providers = tuple(p.strip() for p in self.execution_providers.split(",") if p.strip())
        return RuntimeOptions(
            runtime=self.runtime,
            ort=OrtOptions(providers, self.intra_op_threads, self.inter_op_threads, self.ort_spinning),
            max_batch_size=self.max_batch_size,
            max_queue_delay_ms=self.max_queue_delay_ms,
        )

    @classmethod
    def from_file(cls, path: Path) -> NodeConfig:
        """Reads a JSON object whose keys are field names; unknown keys and contradictions are errors."""
        return load_config(cls, path)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
