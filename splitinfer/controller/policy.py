"""When to re-divide, and when to adopt a new division: thresholds, a margin and hysteresis.

The controller keeps the *basis* of the division in force: the request mix (rate per device class) and the
servers it was computed for. It recomputes a division only when the live conditions moved away from that
basis by more than a threshold (the mix's class shares by ``shift_threshold`` in total-variation distance,
the set of servers changed, or a server's compute by ``capacity_threshold``), and adopts the candidate only
when the cost model predicts a mean-latency gain over the observed mix of at least ``adopt_margin`` (or the
current division cannot be served at all, e.g. its node left).

Hysteresis has three parts, so that traffic hovering around a threshold cannot make the division flap:
- adopting moves the basis to the conditions just observed, so the same oscillation, now measured from the
  new basis, stays under the threshold;
- a rejected candidate records the conditions it was evaluated on; the controller evaluates again only after
  the conditions moved by a further ``shift_threshold / 2`` from those (or the servers changed);
- two adoptions are at least ``min_interval_s`` apart, except when the current division cannot be served.
Everything here is pure: time is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from splitinfer.controller.activity import share_shift

__all__ = ["Basis", "ControllerConfig", "DivisionPolicy", "Trigger"]


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """The division controller's settings (every duration in seconds, every ratio a fraction)."""

    #: Models the controller re-divides, each with the variant it manages: "model@variant".
    models: tuple[str, ...] = ()
    #: Period of the control loop.
    interval_s: float = 5.0
    #: Sliding window the front-ends count requests over (what ``requests_per_s`` means).
    window_s: float = 60.0
    #: Class-share shift (total-variation distance) from the basis that triggers a recomputation.
    shift_threshold: float = 0.3
    #: Relative change of a server's compute that triggers a recomputation.
    capacity_threshold: float = 0.5
    #: Predicted mean-latency gain (fraction of the current division's) needed to adopt a candidate.
    adopt_margin: float = 0.1
    #: Least time between two adoptions (a division the cluster cannot serve is replaced at once).
    min_interval_s: float = 30.0
    #: Requests the window must hold before the mix is trusted.
    min_requests: int = 20
    #: Device classes with less than this share of the window's requests do not shape the division.
    min_request_share: float = 0.1
    #: After the switch, old partitions stay loaded this long (plans already handed out may still use them:
    #: keep it above the front-ends' plan_ttl_s, 300 s) and until the nodes report nothing queued on them.
    drain_s: float = 330.0
    #: Longest wait for the old partitions' queues to empty after ``drain_s``.
    drain_timeout_s: float = 60.0
    #: Servers each server partition is loaded on (more than 1: replicas the planner balances over).
    replicas: int = 1
    #: Bandwidth assumed between servers when dividing, megabits per second.
    server_link_mbps: float = 1000.0
    #: Deadline of each LoadPartition / UnloadPartition call.
    rpc_timeout_s: float = 60.0
    #: Export each new partition to ONNX too, as ``splitinfer divide`` does (nodes run ONNX Runtime).
    onnx: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))  # a JSON config gives a list
        for name in ("interval_s", "window_s", "min_interval_s", "drain_s", "drain_timeout_s", "rpc_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name in ("interval_s", "window_s") and value == 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0 (> 0 for periods), got {value}")
        for name in ("shift_threshold", "capacity_threshold", "adopt_margin", "min_request_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.min_requests < 1 or self.replicas < 1:
            raise ValueError("min_requests and replicas must be at least 1")
        if not self.server_link_mbps > 0:
            raise ValueError(f"server_link_mbps must be above 0, got {self.server_link_mbps}")
        for entry in self.models:
            model, at, variant = entry.partition("@")
            if not model or not at or not variant:
                raise ValueError(f"models entries are 'model@variant', got {entry!r}")


@dataclass(frozen=True, slots=True)
class Basis:
    """The conditions a division was computed for: rate per device class, compute per server address."""

    mix: Mapping[str, float] = field(default_factory=dict)
    servers: Mapping[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        mix = ", ".join(f"{c} {r:.2f}/s" for c, r in sorted(self.mix.items())) or "no traffic"
        servers = ", ".join(f"{a} {f / 1e9:.1f} GFLOP/s" for a, f in sorted(self.servers.items())) or "no servers"
        return f"mix [{mix}]; servers [{servers}]"


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why a recomputation is due."""

    reason: str
    #: The current division is not served by the live servers (a partition lost every host).
    urgent: bool = False


def _capacity_moved(before: Mapping[str, float], after: Mapping[str, float], threshold: float) -> str:
    for address in sorted(set(before) & set(after)):
        old, new = before[address], after[address]
        if old > 0 and abs(new - old) / old > threshold:
            return f"server {address} compute {old / 1e9:.2f} -> {new / 1e9:.2f} GFLOP/s"
    return ""


class DivisionPolicy:
    """Decides, for one managed model, when to recompute and whether to adopt (see the module docstring)."""

    def __init__(self, config: ControllerConfig, basis: Basis | None = None) -> None:
        self.config = config
        self.basis = basis
        self._evaluated: Basis | None = None
        self._adopted_at_s: float | None = None

    def trigger(self, observed: Basis, now_s: float, *, current_served: bool = True) -> Trigger | None:
        """Whether to compute a candidate division now, and why."""
        config = self.config
        if not current_served:
            return Trigger("the current division is not served by the live servers", urgent=True)
        if self.basis is None:
            return Trigger("no division basis yet")
        if self._adopted_at_s is not None and now_s - self._adopted_at_s < config.min_interval_s:
            return None
        servers_changed = set(observed.servers) != set(self.basis.servers)
        reference = self._evaluated or self.basis
        if servers_changed and set(observed.servers) != set(reference.servers):
            joined = sorted(set(observed.servers) - set(self.basis.servers))
            left = sorted(set(self.basis.servers) - set(observed.servers))
            return Trigger(f"servers changed (joined {joined or '-'}, left {left or '-'})")
        shift = share_shift(self.basis.mix, observed.mix)
        if shift > config.shift_threshold:
            further = share_shift(reference.mix, observed.mix) if self._evaluated is not None else shift
            if self._evaluated is None or further > config.shift_threshold / 2:
                return Trigger(f"request mix moved by {shift:.2f} (threshold {config.shift_threshold:.2f})")
        moved = _capacity_moved(self.basis.servers, observed.servers, config.capacity_threshold)
        if moved and (
            self._evaluated is None
            or _capacity_moved(reference.servers, observed.servers, config.capacity_threshold / 2)
        ):
            return Trigger(moved)
        return None

    def adopt(self, current_ms: float, candidate_ms: float) -> tuple[bool, float]:
        """Whether a candidate predicted at ``candidate_ms`` (mean over the mix) replaces the current division
        predicted at ``current_ms`` (inf: it cannot be served), and the predicted gain as a fraction."""
        if not math.isfinite(candidate_ms):
            return False, 0.0
        if not math.isfinite(current_ms):
            return True, 1.0
        gain = (current_ms - candidate_ms) / current_ms if current_ms > 0 else 0.0
        return gain >= self.config.adopt_margin, gain

    def adopted(self, observed: Basis, now_s: float) -> None:
        """A candidate computed for ``observed`` is now the division in force."""
        self.basis = observed
        self._evaluated = None
        self._adopted_at_s = now_s

    def rejected(self, observed: Basis) -> None:
        """A candidate computed for ``observed`` did not gain enough: remember where it was evaluated."""
        if self.basis is None:
            self.basis = observed
        self._evaluated = observed
