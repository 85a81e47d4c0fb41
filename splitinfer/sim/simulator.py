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

from splitinfer.planner.cost import evaluate
from splitinfer.planner.plan import Plan, assignment_of
from splitinfer.planner.problem import (
    CodecProfile,
    DeviceProfile,
    PlanningProblem,
    Requirements,
    ServerProfile,
    VariantProfile,
)

__all__ = ["DeviceClassSpec", "Metrics", "Scenario", "simulate"]


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


PlanFn = Callable[[PlanningProblem, str], Plan]


def simulate(scenario: Scenario, plan: PlanFn, label: str) -> Metrics:
    """Runs every request of the scenario through ``plan(problem, device_id)``; returns the metrics."""
    rng = random.Random(scenario.seed)
    shares = [c.share for c in scenario.device_classes]
    classes = [rng.choices(scenario.device_classes, shares)[0] for _ in range(scenario.devices)]
    battery = [scenario.battery_start_percent] * scenario.devices
    believed = [scenario.uplink_trace[0]] * scenario.devices
    reported_queue = [scenario.server_queue_ms] * len(scenario.servers)
    latencies, energies, accuracies, plan_times = [], [], [], []
    violations = 0
    req = scenario.requirements
    for r, actual_uplink in enumerate(scenario.uplink_trace):
        d = r % scenario.devices
        spec = classes[d]

        def device(uplink: float, d: int = d, spec: DeviceClassSpec = spec) -> DeviceProfile:
            return DeviceProfile(
                flops=spec.flops,
                uplink_mbps=uplink,
                downlink_mbps=uplink * scenario.downlink_factor,
                rtt_ms=scenario.rtt_ms,
                battery_percent=battery[d],
                charging=spec.charging,
                compute_power_w=spec.compute_power_w,
                transmit_power_w=spec.transmit_power_w,
                memory_bytes=spec.memory_bytes,
                device_class=spec.name,
            )

        servers = tuple(replace(s, queue_ms=q) for s, q in zip(scenario.servers, reported_queue, strict=True))
        problem = PlanningProblem(scenario.variants, device(believed[d]), servers, scenario.codecs, req)
        start = time.perf_counter()
        chosen = plan(problem, f"device-{d}")
        plan_times.append((time.perf_counter() - start) * 1e3)
        actual_queue = [rng.expovariate(1 / scenario.server_queue_ms) for _ in scenario.servers]
        actual_servers = tuple(replace(s, queue_ms=q) for s, q in zip(scenario.servers, actual_queue, strict=True))
        actual = PlanningProblem(scenario.variants, device(actual_uplink), actual_servers, scenario.codecs, req)
        outcome = evaluate(actual, assignment_of(actual, chosen))
        latencies.append(outcome.latency_s * 1e3)
        energies.append(outcome.energy_j * 1e3)
        accuracies.append(outcome.accuracy)
        late = req.max_latency_ms > 0 and outcome.latency_s * 1e3 > req.max_latency_ms
        inaccurate = req.min_accuracy > 0 and outcome.accuracy < req.min_accuracy - 1e-12
        violations += late or inaccurate
        if not spec.charging:
            battery[d] = max(0.0, battery[d] - outcome.energy_j / (spec.battery_wh * 3600) * 100)
        believed[d] = 0.7 * believed[d] + 0.3 * actual_uplink
        reported_queue = actual_queue
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
        final_battery_percent=statistics.fmean(battery),
    )
