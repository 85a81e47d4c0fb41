"""What the registry knows about a server: a small, typed, JSON-serialisable record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from splitinfer.errors import InvalidArgument

__all__ = ["FRONTEND", "NODE", "ROLES", "ServerRecord"]

#: A server node (hosts partitions; what the planner and the replicas index see).
NODE = "node"
#: A front-end (plans, dispatches, receives deliveries as a sink); never a replica of a partition.
FRONTEND = "frontend"
ROLES = (NODE, FRONTEND)


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """A live server and its load, as last reported."""

    address: str
    #: Hosted, ready partitions as "model@variant/partition".
    partitions: tuple[str, ...] = ()
    in_flight: int = 0
    #: Requests waiting or running per partition.
    queue_lengths: dict[str, int] = field(default_factory=dict)
    compute_flops: float = 0.0
    memory_available_bytes: int = 0
    device: str = "cpu"
    #: Unix time of the report.
    updated_unix_s: float = 0.0
    #: Port of the node's Prometheus /metrics endpoint on the address's host; 0 when it serves none.
    metrics_port: int = 0
    #: What kind of server this is: NODE or FRONTEND.
    role: str = NODE
    #: Dynamic batching on the node: most rows one partition run takes (1: off), and the longest a request
    #: waits for others to join its batch.
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidArgument(f"server record role must be one of {list(ROLES)}, got {self.role!r}")

    def to_json(self) -> bytes:
        data = asdict(self)
        data["partitions"] = list(self.partitions)
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ServerRecord:
        try:
            data = json.loads(raw)
            data["partitions"] = tuple(data.get("partitions", ()))
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"malformed server record: {exc}") from None
