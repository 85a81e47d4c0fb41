"""What the planner decides over: variants and their partitions, the device, servers, codecs, requirements.

Everything here is plain immutable data with units in the names, built from the pool, the registry and the
device's report (see :mod:`splitinfer.planner.build`), so that solvers and tests need no services.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from splitinfer.codecs import CodecSpec

__all__ = [
    "CodecProfile",
    "DeviceProfile",
    "Edge",
    "PartitionCost",
    "PlanningProblem",
    "Requirements",
    "ServerProfile",
    "VariantProfile",
]


def _factor(factors: tuple[tuple[str, float], ...], key: str) -> float | None:
    for name, value in factors:
        if name == key:
            return value
    return None


@dataclass(frozen=True, slots=True)
class PartitionCost:
    """One partition of a variant's division."""

    name: str
    flops: float
    param_bytes: int


@dataclass(frozen=True, slots=True)
class Edge:
    """A tensor from partition ``src`` to partition ``dst`` (indexes; -1 is the model input on the device,
    ``len(partitions)`` the model output delivered to the device)."""

    tensor: str
    src: int
    dst: int
    nbytes: int
    #: Measured payload / raw bytes of this tensor per codec name ("int8+zstd", ...): a codec compresses maps
    #: of different sparsity and dtype differently. A codec not listed uses its profile's ``size_ratio``.
    size_ratios: tuple[tuple[str, float], ...] = ()

    def size_ratio(self, codec: CodecProfile) -> float:
        """Payload bytes / raw bytes of this tensor under ``codec``."""
        name = str(codec.codec)
        for key, value in self.size_ratios:
            if key == name:
                return value
        return codec.size_ratio


@dataclass(frozen=True, slots=True)
class VariantProfile:
    """A variant of the model: its partitions in topological order and the tensors between them."""

    model: str
    variant: str
    accuracy: float
    accuracy_measured: bool
    partitions: tuple[PartitionCost, ...]
    edges: tuple[Edge, ...]

    @property
    def total_flops(self) -> float:
        return sum(p.flops for p in self.partitions)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """The requesting device, as it reports itself."""

    flops: float
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float = 20.0
    battery_percent: float = 100.0
    charging: bool = True
    compute_power_w: float = 3.0
    transmit_power_w: float = 1.5
    memory_bytes: int = 1 << 32
    device_class: str = ""
    #: False for a client that runs no partition at all (a thin camera, or the front-end standing in for an
    #: Open Inference Protocol client): every partition is placed on a server.
    computes: bool = True
    #: Calibrated place model (see :func:`splitinfer.planner.cost.compute_terms`): a partition not measured
    #: here takes ``compute_ratio`` x its base time (FLOPs / ``flops``) plus ``fixed_ms`` (dispatch, small ops).
    compute_ratio: float = 1.0
    fixed_ms: float = 0.0
    #: Measured / base compute per partition ("model@variant/partition", ratio), from calibration: FLOPs alone
    #: misjudge some partitions (per-operator overhead, memory-bound layers on small maps). A listed partition
    #: takes exactly base x factor; the place model above applies only to the others.
    partition_factors: tuple[tuple[str, float], ...] = ()
    #: Calibrated per-request overhead beyond compute and the modelled transfers (dispatch, RPCs, framework
    #: work): of a plan that uses servers, and of one that runs wholly on the device; milliseconds.
    offload_overhead_ms: float = 0.0
    local_overhead_ms: float = 0.0

    def factor(self, key: str) -> float | None:
        """Measured / base compute time of a partition on this device, or None when it was never measured."""
        return _factor(self.partition_factors, key)


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """A server node that can run partitions it hosts."""

    address: str
    flops: float
    #: Expected wait before a request starts on it, from its reported queue.
    queue_ms: float = 0.0
    #: Partitions it hosts, "model@variant/partition"; None means it can run any partition.
    hosts: frozenset[str] | None = None
    #: Calibrated place model, as for :class:`DeviceProfile`.
    compute_ratio: float = 1.0
    fixed_ms: float = 0.0
    partition_factors: tuple[tuple[str, float], ...] = ()

    def factor(self, key: str) -> float | None:
        """Measured / base compute time of a partition on this server, or None when it was never measured."""
        return _factor(self.partition_factors, key)

    def can_run(self, model: str, variant: str, partition: str) -> bool:
        return self.hosts is None or f"{model}@{variant}/{partition}" in self.hosts


@dataclass(frozen=True, slots=True)
class CodecProfile:
    """A codec and what it does to bytes, time and accuracy."""

    codec: CodecSpec
    #: Payload bytes / raw bytes on typical activations (measured: see benchmarks/codecs.py).
    size_ratio: float
    #: Seconds per raw byte to encode plus decode, on a reference server core.
    seconds_per_byte: float
    #: Accuracy lost when a tensor of the named variant crosses with this codec (0 for lossless codecs).
    accuracy_drop: dict[str, float] = field(default_factory=dict)
    default_accuracy_drop: float = 0.0
    #: Where the figures come from ("measured on ...", "declared").
    source: str = "declared"

    def drop(self, variant: str) -> float:
        return self.accuracy_drop.get(variant, self.default_accuracy_drop)


@dataclass(frozen=True, slots=True)
class Requirements:
    max_latency_ms: float = 0.0  # 0: none
    min_accuracy: float = 0.0  # 0: none
    #: "auto" (balance by battery), "latency" or "energy".
    objective: str = "auto"


@dataclass(frozen=True, slots=True)
class PlanningProblem:
    variants: tuple[VariantProfile, ...]
    device: DeviceProfile
    servers: tuple[ServerProfile, ...]
    codecs: tuple[CodecProfile, ...]
    requirements: Requirements = Requirements()
    #: Bandwidth between servers, megabits per second.
    server_link_mbps: float = 1000.0
    #: One-way latency between servers, milliseconds.
    server_link_ms: float = 0.2
    #: What a tensor's hop from one server to another costs beyond the link: the sender's forward and the
    #: next node's request path (the call, its checks, decoding, step timing), milliseconds. Measured by
    #: benchmarks/pipeline.py: a whole 4 KiB node hop takes about 1.1 ms against 0.2 ms of wire. Without it
    #: a plan splits a request over two servers for a few hundredths of a millisecond of calibrated compute
    #: and pays a hop (and the CPU of a second request path) for it. Charged per crossing tensor, as the link
    #: latency is: a cut that two tensors cross in one call pays it twice (an over-estimate, which only makes
    #: splitting a request over servers rarer).
    server_hop_ms: float = 0.9
    #: Device codec work relative to a server core (a phone encodes this many times slower).
    device_codec_slowdown: float = 4.0
