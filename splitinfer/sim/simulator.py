"""The scenario simulator: a population of devices sending requests while bandwidth, batteries and server
load change, and a planner deciding each request from what the device believes; the plan is then scored
under what actually happened.

Believed vs actual: a device plans with its smoothed estimate of the uplink (EWMA of past samples) and the
servers' last reported queues; the request then meets the trace's actual uplink and fresh queues. Batteries
drain by the energy each request costs the device.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from splitinfer.planner.cost import Evaluation, evaluate
from splitinfer.planner.plan import Plan, assignment_of
from splitinfer.planner.problem import (
    CodecProfile,
    DeviceProfile,
    PlanningProblem,
    Requirements,
    ServerProfile,
    VariantProfile,
)

__all__ = ["DeviceClassSpec", "Metrics", "Scenario", "ScenarioRun", "simulate"]


@dataclass(frozen=True, slots=True)
class DeviceClassSpec:
    name: str
    flops: float
    compute_power_w: float
    transmit_power_w: float
    battery_wh: float
    share: float = 1.0
    memory_bytes: int = 1 << 32
    charging: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    variants: tuple[VariantProfile, ...]
    servers: tuple[ServerProfile, ...]
    codecs: tuple[CodecProfile, ...]
    requirements: Requirements
    device_classes: tuple[DeviceClassSpec, ...]
    #: Actual uplink of each request, in order.
    uplink_trace: tuple[float, ...]
    devices: int = 20
    battery_start_percent: float = 100.0
    #: Mean of the servers' (exponentially distributed) queueing delay.
    server_queue_ms: float = 2.0
    rtt_ms: float = 30.0
    downlink_factor: float = 3.0
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Metrics:
    planner: str
    scenario: str
    requests: int
    slo_violation_rate: float
    mean_latency_ms: float
    p95_latency_ms: float
    mean_energy_mj: float
    mean_accuracy: float
    mean_plan_ms: float
    final_battery_percent: float
    p50_plan_ms: float = 0.0


PlanFn = Callable[[PlanningProblem, str], Plan]


class ScenarioRun:
    """One pass over a scenario's requests, step by step: what the device believes for the next request,
    what actually happens, and the bookkeeping after it (battery drain, the device's bandwidth estimate,
    the servers' queues). :func:`simulate` and the learning environment (:mod:`splitinfer.sim.env`) both
    drive it."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        shares = [c.share for c in scenario.device_classes]
        self.classes = [self.rng.choices(scenario.device_classes, shares)[0] for _ in range(scenario.devices)]
        self.battery = [scenario.battery_start_percent] * scenario.devices
        self.believed = [scenario.uplink_trace[0]] * scenario.devices
        self.reported_queue = [scenario.server_queue_ms] * len(scenario.servers)
        self.request = 0
        self._actual_queue: list[float] = []
        self._actual_for = -1

    @property
    def done(self) -> bool:
        return self.request >= len(self.scenario.uplink_trace)

    @property
    def device_index(self) -> int:
        return self.request % self.scenario.devices

    def _device(self, uplink: float) -> DeviceProfile:
        d, scenario = self.device_index, self.scenario
        spec = self.classes[d]
        return DeviceProfile(
            flops=spec.flops,
            uplink_mbps=uplink,
            downlink_mbps=uplink * scenario.downlink_factor,
            rtt_ms=scenario.rtt_ms,
            battery_percent=self.battery[d],
            charging=spec.charging,
            compute_power_w=spec.compute_power_w,
            transmit_power_w=spec.transmit_power_w,
            memory_bytes=spec.memory_bytes,
            device_class=spec.name,
        )

    def believed_problem(self) -> PlanningProblem:
        """The next request as its device sees it: its smoothed uplink, the servers' last reported queues."""
        scenario = self.scenario
        servers = tuple(replace(s, queue_ms=q) for s, q in zip(scenario.servers, self.reported_queue, strict=True))
        d = self.device_index
        return PlanningProblem(
            scenario.variants, self._device(self.believed[d]), servers, scenario.codecs, scenario.requirements
        )

    def actual_problem(self) -> PlanningProblem:
        """The next request as it really runs: the trace's uplink, fresh queues (drawn once per request)."""
        scenario = self.scenario
        if self._actual_for != self.request:
            self._actual_queue = [self.rng.expovariate(1 / scenario.server_queue_ms) for _ in scenario.servers]
            self._actual_for = self.request
        servers = tuple(replace(s, queue_ms=q) for s, q in zip(scenario.servers, self._actual_queue, strict=True))
        uplink = scenario.uplink_trace[self.request]
        return PlanningProblem(scenario.variants, self._device(uplink), servers, scenario.codecs, scenario.requirements)

    def outcome(self, plan: Plan) -> Evaluation:
        """How ``plan`` does on the next request's actual conditions."""
        actual = self.actual_problem()
        return evaluate(actual, assignment_of(actual, plan))

    def violated(self, outcome: Evaluation) -> bool:
        req = self.scenario.requirements
        late = req.max_latency_ms > 0 and outcome.latency_s * 1e3 > req.max_latency_ms
        inaccurate = req.min_accuracy > 0 and outcome.accuracy < req.min_accuracy - 1e-12
        return late or inaccurate

    def advance(self, outcome: Evaluation) -> None:
        """Drains the device's battery by what the request cost, updates its estimate, next request."""
        self.actual_problem()  # the queues of this request are drawn even if nobody looked at them
        d, spec = self.device_index, self.classes[self.device_index]
        if not spec.charging:
            self.battery[d] = max(0.0, self.battery[d] - outcome.energy_j / (spec.battery_wh * 3600) * 100)
        self.believed[d] = 0.7 * self.believed[d] + 0.3 * self.scenario.uplink_trace[self.request]
        self.reported_queue = self._actual_queue
        self.request += 1


def simulate(scenario: Scenario, plan: PlanFn, label: str) -> Metrics:
    """Runs every request of the scenario through ``plan(problem, device_id)``; returns the metrics."""
    run = ScenarioRun(scenario)
    latencies, energies, accuracies, plan_times = [], [], [], []
    violations = 0
    while not run.done:
        problem = run.believed_problem()
        start = time.perf_counter()
        chosen = plan(problem, f"device-{run.device_index}")
        plan_times.append((time.perf_counter() - start) * 1e3)
        outcome = run.outcome(chosen)
        latencies.append(outcome.latency_s * 1e3)
        energies.append(outcome.energy_j * 1e3)
        accuracies.append(outcome.accuracy)
        violations += run.violated(outcome)
        run.advance(outcome)
    ordered = sorted(latencies)
    return Metrics(
        planner=label,
        scenario=scenario.name,
        requests=len(latencies),
        slo_violation_rate=violations / max(1, len(latencies)),
        mean_latency_ms=statistics.fmean(latencies),
        p95_latency_ms=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        mean_energy_mj=statistics.fmean(energies),
        mean_accuracy=statistics.fmean(accuracies),
        mean_plan_ms=statistics.fmean(plan_times),
        final_battery_percent=statistics.fmean(run.battery),
        p50_plan_ms=statistics.median(plan_times),
    )
