"""What a division is worth for the traffic observed now: the planner's predicted latency, per device class
and averaged over the request mix.

Each active device class is planned as the planner would plan one of its devices (its median reported compute
and uplink), against servers hosting the division's partitions, with the latency objective. A class the
division cannot serve (a partition with no host and a device that cannot run it) predicts infinity, and so
does the mean. Pure: no services, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from splitinfer.controller.activity import ClassActivity
from splitinfer.errors import SplitInferError
from splitinfer.planner.base import Solver
from splitinfer.planner.chain import AutoSolver
from splitinfer.planner.problem import (
    CodecProfile,
    DeviceProfile,
    PlanningProblem,
    Requirements,
    ServerProfile,
    VariantProfile,
)
from splitinfer.planner.profiles import DEFAULT_CODECS

__all__ = ["ClassPrediction", "MixPrediction", "class_device", "predict_mix"]

#: Memory assumed for a device class whose devices did not report theirs.
DEFAULT_DEVICE_MEMORY_BYTES = 1 << 32


@dataclass(frozen=True, slots=True)
class ClassPrediction:
    device_class: str
    requests_per_s: float
    predicted_ms: float
    #: Where the plan runs things, as the planner prints it ("" when the class cannot be served).
    plan: str


@dataclass(frozen=True, slots=True)
class MixPrediction:
    """Predicted latency of a division for each class and averaged by request rate."""

    classes: tuple[ClassPrediction, ...]

    @property
    def mean_ms(self) -> float:
        total = sum(c.requests_per_s for c in self.classes)
        if total <= 0:
            return math.inf if any(not math.isfinite(c.predicted_ms) for c in self.classes) else 0.0
        return sum(c.requests_per_s * c.predicted_ms for c in self.classes) / total

    def of(self, device_class: str) -> float:
        return next((c.predicted_ms for c in self.classes if c.device_class == device_class), math.nan)

    def describe(self) -> str:
        parts = [f"{c.device_class} {c.predicted_ms:.1f} ms" for c in self.classes]
        return f"mean {self.mean_ms:.1f} ms ({', '.join(parts) or 'no traffic'})"


def class_device(activity: ClassActivity) -> DeviceProfile:
    """A device of the class as the planner sees one: its median figures; 0 FLOP/s means it runs nothing."""
    return DeviceProfile(
        flops=activity.compute_flops or 1.0,
        computes=activity.compute_flops > 0,
        uplink_mbps=activity.uplink_mbps or 1.0,
        downlink_mbps=activity.uplink_mbps or 1.0,
        memory_bytes=activity.memory_bytes or DEFAULT_DEVICE_MEMORY_BYTES,
        device_class=activity.device_class,
    )


def predict_mix(
    variant: VariantProfile,
    servers: Sequence[ServerProfile],
    mix: Mapping[str, ClassActivity],
    *,
    solver: Solver | None = None,
    codecs: tuple[CodecProfile, ...] = DEFAULT_CODECS,
    server_link_mbps: float = 1000.0,
) -> MixPrediction:
    """The planner's latency for each class of ``mix`` on ``variant`` served by ``servers``."""
    solver = solver or AutoSolver()
    predictions = []
    for name, activity in sorted(mix.items()):
        problem = PlanningProblem(
            (variant,),
            class_device(activity),
            tuple(servers),
            codecs,
            Requirements(objective="latency"),
            server_link_mbps=server_link_mbps,
        )
        try:
            plan = solver.solve(problem)
            predicted, summary = plan.predicted_latency_ms, plan.summary()
        except SplitInferError:  # no placement serves every partition
            predicted, summary = math.inf, ""
        predictions.append(ClassPrediction(name, activity.requests_per_s, predicted, summary))
    return MixPrediction(tuple(predictions))
