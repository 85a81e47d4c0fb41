"""The Planner: a solver behind a plan cache keyed by bucketed conditions, with online calibration.

Conditions are bucketed so that small changes reuse a plan and real ones re-plan: bandwidth on a log scale
(four buckets per factor of two), battery in bands of 10% (and whether charging), the latency budget on a
log scale, the accuracy floor to 0.005, the objective, and the registry's and the calibration's versions (a
server joining, leaving or hosting something else, or an estimate moving by more than 10%, re-plans).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from splitinfer.planner.base import Solver
from splitinfer.planner.calibration import Calibration
from splitinfer.planner.chain import AutoSolver
from splitinfer.planner.plan import Plan
from splitinfer.planner.problem import PlanningProblem

__all__ = ["PlanKey", "Planner"]


def log_bucket(value: float, per_octave: int = 4) -> int:
    return 0 if value <= 0 else round(math.log2(value) * per_octave)


@dataclass(frozen=True, slots=True)
class PlanKey:
    model: str
    device_class: str
    uplink: int
    downlink: int
    battery_band: int
    charging: bool
    latency_budget: int
    min_accuracy: int
    objective: str
    registry_version: int
    calibration_version: int
    #: The codec menu (a device may accept only some codecs).
    codecs: str = ""

    @classmethod
    def of(cls, problem: PlanningProblem, registry_version: int, calibration_version: int) -> PlanKey:
        device, req = problem.device, problem.requirements
        # Every variant the problem may choose from: a request pinned to one variant is not another's plan;
        # with its partitions, so that a new division of a variant (new partition names) is planned afresh.
        model = ",".join(sorted(f"{v.model}@{v.variant}:{'/'.join(p.name for p in v.partitions)}"
                                for v in problem.variants))  # fmt: skip
        return cls(
            model=model,
            device_class=device.device_class,
            uplink=log_bucket(device.uplink_mbps),
            downlink=log_bucket(device.downlink_mbps),
            battery_band=min(9, int(device.battery_percent // 10)),  # 90-100% is one band
            charging=device.charging,
            latency_budget=log_bucket(req.max_latency_ms, 8),
            min_accuracy=round(req.min_accuracy * 200),
            objective=req.objective,
            registry_version=registry_version,
            calibration_version=calibration_version,
            codecs=",".join(str(c.codec) for c in problem.codecs),
        )


class Planner:
    def __init__(
        self, solver: Solver | None = None, calibration: Calibration | None = None, cache_size: int = 4096
    ) -> None:
        self.solver = solver or AutoSolver()
        self.calibration = calibration or Calibration()
        self._cache: OrderedDict[PlanKey, Plan] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def calibrated(self, problem: PlanningProblem, device_id: str = "") -> PlanningProblem:
        return replace(
            problem,
            device=self.calibration.device(
                device_id, problem.device, problem.variants[0].model if problem.variants else ""
            ),
            servers=tuple(self.calibration.server(s) for s in problem.servers),
        )

    def plan(self, problem: PlanningProblem, *, registry_version: int = 0, device_id: str = "") -> Plan:
        """The plan for these conditions: from the cache when an equivalent request was planned, else solved."""
        key = PlanKey.of(problem, registry_version, self.calibration.version)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return cached
        plan = self.solver.solve(self.calibrated(problem, device_id))
        with self._lock:
            self.misses += 1
            self._cache[key] = plan
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return plan
