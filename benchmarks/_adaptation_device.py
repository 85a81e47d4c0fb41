"""The device side of the adaptation experiment; runs inside the device network namespace.

    python _adaptation_device.py CONFIG.json measure   # every fixed strategy, the planner's and Neurosurgeon's
    python _adaptation_device.py CONFIG.json step      # re-plans from measured bandwidth while it is stepped

A strategy is a device cut (i, j): partitions [0, i) and [j, n) run here, [i, j) on the edge node. The device
is emulated ``slowdown`` times slower than it is (each local run is stretched by sleeping). Prints JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from edge_agent.monitors import NetworkEstimator
from splitinfer.codecs import CodecSpec, decode_tensor, encode_tensor
from splitinfer.planner import AutoSolver, NeurosurgeonSolver
from splitinfer.planner.base import Solver
from splitinfer.planner.build import problem_from
from splitinfer.planner.cost import DEVICE, Assignment, evaluate
from splitinfer.planner.problem import PlanningProblem
from splitinfer.planner.profiles import DEFAULT_CODECS
from splitinfer.pool import ModelPool
from splitinfer.program.interpreter import CompiledProgram
from splitinfer.program.serde import load_program
from splitinfer.registry import ServerRecord
from splitinfer.runtime.compute import measure_flops
from splitinfer.transport.clients import RouteClient
from splitinfer.v1 import plan_pb2, route_pb2


class Device:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.pool = ModelPool(Path(config["pool"]))
        self.manifest = self.pool.manifest(config["sha"])
        self.parts = self.manifest["partitions"]
        self.programs = [CompiledProgram(load_program(Path(config["exports"]) / p["name"])) for p in self.parts]
        torch.set_num_threads(1)
        self.slowdown = float(config["slowdown"])
        self.flops = measure_flops(0.3) / self.slowdown
        self.server_flops = float(config["server_flops"])
        self.partition_factors: tuple[tuple[str, float], ...] = ()
        self.server_partition_factors: tuple[tuple[str, float], ...] = ()
        self.offload_overhead_ms = 0.0
        self.last_server_steps_s: list[float] = []
        self.last_predicted_ms = 0.0
        self.rtt_ms = 2.0
        self.last_device_s = self.last_server_compute_s = 0.0
        self.client = RouteClient()
        self.input_name = self.manifest["inputs"][0].split(":", 1)[0]
        torch.manual_seed(0)
        self.x = torch.randn(*config["input_shape"])
        self.codecs = tuple(c for c in DEFAULT_CODECS if str(c.codec) == "none")

    def _local(self, k: int, values: dict[str, torch.Tensor]) -> float:
        start = time.perf_counter()
        values.update(self.programs[k](values))
        elapsed = time.perf_counter() - start
        time.sleep(elapsed * (self.slowdown - 1))  # emulate the slower device
        seconds = time.perf_counter() - start
        self.last_device_s += seconds
        return seconds

    def run(self, i: int, j: int, request_id: str) -> tuple[float, int]:
        """One request under cut (i, j); returns (seconds, bytes uploaded)."""
        start = time.perf_counter()
        self.last_device_s = self.last_server_compute_s = 0.0
        values: dict[str, torch.Tensor] = {self.input_name: self.x}
        for k in range(i):
            self._local(k, values)
        sent = 0
        if i < j:
            route = self._route(i, j)
            produced = {o.tensor_name for step in route.steps for o in step.outputs}
            needed = {n for step in route.steps for n in step.input_names} - produced
            messages = {n: encode_tensor(values[n], n) for n in needed}
            sent = sum(len(m.payload) for m in messages.values())
            delivered, timings = self.client.run(route, messages, request_id=request_id, timeout_s=300)
            self.last_server_compute_s = sum(t.compute_ms for t in timings) / 1e3
            self.last_server_steps_s = [t.compute_ms / 1e3 for t in timings]
            values.update({n: decode_tensor(t) for n, t in delivered.items()})
        for k in range(j, len(self.parts)):
            self._local(k, values)
        return time.perf_counter() - start, sent

    def _route(self, i: int, j: int) -> route_pb2.Route:
        """Partitions [i, j) on the edge node: outputs read inside go to their step, the rest come back."""
        step_of = {p["name"]: k - i for k, p in enumerate(self.parts) if i <= k < j}
        steps = []
        for p in self.parts[i:j]:
            outputs = []
            for spec in p["outputs"]:
                tensor = spec.split(":", 1)[0]
                consumers = [step_of[c] for c in p["successors"].get(tensor, []) if c in step_of]
                others = [c for c in p["successors"].get(tensor, []) if c not in step_of]
                outputs.append(route_pb2.TensorRoute(
                    tensor_name=tensor, encoding=CodecSpec().to_proto(), consumer_steps=consumers,
                    deliver=bool(others) or not p["successors"].get(tensor),
                ))  # fmt: skip
            steps.append(route_pb2.RouteStep(
                partition=route_pb2.PartitionRef(
                    model=self.manifest["model"], variant=self.manifest["variant"], partition=p["name"]),
                addresses=[self.config["node"]],
                input_names=[s.split(":", 1)[0] for s in p["inputs"]],
                outputs=outputs,
            ))  # fmt: skip
        return route_pb2.Route(steps=steps)

    def compute_estimate_s(self, i: int, j: int) -> float:
        flops = [p["flops"] for p in self.parts]
        return sum(flops[:i] + flops[j:]) / self.flops + sum(flops[i:j]) / self.server_flops

    def calibrate(self, uplink_mbps: float) -> None:
        """Effective compute speeds from observed runs (as the planner's calibration does in the system):
        FLOP counts alone overrate small operators, whose cost is mostly per-operator overhead."""
        n, total = len(self.parts), sum(p["flops"] for p in self.parts)
        self.run(n, n, "calibrate-warm")
        self.flops = total / min(self.run(n, n, f"calibrate-{k}")[0] for k in range(2))
        # Each partition's own device time against its FLOPs at that speed: the planner's per-partition
        # calibration (in the system, agents report these timings to the front-end with each request).
        per_partition = [float("inf")] * n
        for _ in range(2):
            values: dict[str, torch.Tensor] = {self.input_name: self.x}
            for k in range(n):
                per_partition[k] = min(per_partition[k], self._local(k, values))
        key = f"{self.manifest['model']}@{self.manifest['variant']}"
        self.partition_factors = tuple(
            (f"{key}/{p['name']}", per_partition[k] / max(1e-9, p["flops"] / self.flops))
            for k, p in enumerate(self.parts)
        )
        self.run(0, n, "calibrate-server-warm")
        computes, steps, rests = [], [float("inf")] * n, []
        for k in range(2):
            seconds, _ = self.run(0, n, f"calibrate-server-{k}")
            computes.append(self.last_server_compute_s)
            steps = [min(a, b) for a, b in zip(steps, self.last_server_steps_s, strict=True)]
            rests.append(seconds - self.last_server_compute_s)
        self.server_flops = total / max(1e-6, min(computes))
        # The node's own per-step times (server-measured, as the front-end's calibration uses them): small
        # partitions cost their dispatch, which FLOPs at the whole model's speed leave out.
        self.server_partition_factors = tuple(
            (f"{key}/{p['name']}", steps[k] / max(1e-9, p["flops"] / self.server_flops))
            for k, p in enumerate(self.parts)
        )
        # The per-request cost of offloading beyond the modelled transfers (RPC, serialisation): the measured
        # rest of a server-only request less what the link model predicts for it at this uplink.
        predicted_rest = self.predict(uplink_mbps, 0, n)
        self.offload_overhead_ms = max(
            0.0, min(rests) * 1e3 - predicted_rest["transfer_ms"] - predicted_rest["overhead_ms"]
        )

    def problem(self, uplink_mbps: float) -> PlanningProblem:
        record = ServerRecord(
            address=self.config["node"],
            partitions=tuple(f"{self.manifest['model']}@{self.manifest['variant']}/{p['name']}" for p in self.parts),
            compute_flops=self.server_flops,
        )
        state = plan_pb2.DeviceState(
            device_id="adaptation", compute_flops=self.flops, uplink_mbps=uplink_mbps, downlink_mbps=uplink_mbps,
            rtt_ms=self.rtt_ms, battery_percent=100, charging=True,
        )  # fmt: skip
        problem = problem_from([self.manifest], [record], state, plan_pb2.Requirements(), self.codecs)
        device = replace(
            problem.device, partition_factors=self.partition_factors, offload_overhead_ms=self.offload_overhead_ms
        )
        servers = tuple(replace(s, partition_factors=self.server_partition_factors) for s in problem.servers)
        return replace(problem, device=device, servers=servers)

    def plan(self, uplink_mbps: float, solver: Solver | None = None) -> tuple[int, int]:
        """The device cut (i, j) the planner (or ``solver``) picks at ``uplink_mbps``."""
        plan = (solver or AutoSolver()).solve(self.problem(uplink_mbps))
        self.last_predicted_ms = plan.predicted_latency_ms
        on_device = [p.on_device for p in plan.placements]
        i = on_device.index(False) if False in on_device else len(on_device)
        j = len(on_device) - on_device[::-1].index(False) if False in on_device else len(on_device)
        return i, j

    def predict(self, uplink_mbps: float, i: int, j: int) -> dict[str, float]:
        """The cost model's prediction for cut (i, j), per component (ms): what the planner compares."""
        problem = self.problem(uplink_mbps)
        n = len(self.parts)
        locations = tuple(0 if i <= k < j else DEVICE for k in range(n))
        ev = evaluate(problem, Assignment(variant=0, locations=locations, codecs=()))
        server = sum(c for k, c in enumerate(ev.compute_s) if locations[k] != DEVICE)
        return {
            "total_ms": ev.latency_s * 1e3, "device_ms": ev.device_compute_s * 1e3, "server_ms": server * 1e3,
            "transfer_ms": ev.transfer_s * 1e3,
            "overhead_ms": (ev.latency_s - ev.device_compute_s - server - ev.transfer_s) * 1e3,
        }  # fmt: skip


def measure(device: Device, repeats: int, mbps: float) -> dict[str, Any]:
    n = len(device.parts)
    device.calibrate(mbps)
    strategies: dict[str, tuple[int, int]] = {"server-only": (0, n)}
    strategies.update({f"cut after {device.parts[k - 1]['name']}": (k, n) for k in range(1, n)})
    strategies["device-only"] = (n, n)
    planned = device.plan(mbps)
    predicted_ms = device.last_predicted_ms  # the planner's own prediction for the plan it chose
    neurosurgeon = device.plan(mbps, NeurosurgeonSolver())
    results: dict[str, Any] = {}
    for name, (i, j) in [*strategies.items(), ("planner", planned), ("neurosurgeon", neurosurgeon)]:
        device.run(i, j, f"warm-{name}-{time.time_ns()}")
        samples = []
        parts: dict[str, list[float]] = {"device_ms": [], "server_ms": [], "rest_ms": []}
        for r in range(repeats):
            seconds, sent = device.run(i, j, f"{name}-{r}-{time.time_ns()}")
            samples.append(seconds * 1e3)
            parts["device_ms"].append(device.last_device_s * 1e3)
            parts["server_ms"].append(device.last_server_compute_s * 1e3)
            parts["rest_ms"].append((seconds - device.last_device_s - device.last_server_compute_s) * 1e3)
        results[name] = {
            "cut": [i, j], "median_ms": statistics.median(samples), "samples_ms": samples, "bytes": sent,
            # Measured per component (medians): device compute, server compute (the node's own timings), and
            # the rest (transfers, RPCs, serialisation); and the cost model's prediction of the same.
            "measured": {k: statistics.median(v) for k, v in parts.items()},
            "predicted": device.predict(mbps, i, j),
        }  # fmt: skip
    results["planner"]["predicted_ms"] = predicted_ms
    return {
        "strategies": results, "device_flops": device.flops, "server_flops": device.server_flops, "partitions": n,
        "offload_overhead_ms": device.offload_overhead_ms,
    }  # fmt: skip


def step(device: Device, config: dict[str, Any]) -> dict[str, Any]:
    """Runs requests back to back, re-planning before each from the measured uplink, until told to stop."""
    device.calibrate(config["start_mbps"])
    estimator = NetworkEstimator(initial_uplink_mbps=config["start_mbps"], initial_rtt_ms=2.0)
    stop_file, log = Path(config["stop_file"]), []
    while not stop_file.exists():
        planned_at = time.monotonic()
        i, j = device.plan(estimator.uplink_mbps)
        seconds, sent = device.run(i, j, f"step-{time.time_ns()}")
        if sent:
            # The network share of the request: total minus the (known, emulated) compute on both sides.
            estimator.observe_transfer(sent, max(1e-3, seconds - device.compute_estimate_s(i, j)))
        log.append(
            {"planned_at": planned_at, "cut": [i, j], "estimate_mbps": estimator.uplink_mbps, "ms": seconds * 1e3}
        )
    return {"log": log}


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    device = Device(config)
    if sys.argv[2] == "measure":
        result = measure(device, int(config["repeats"]), float(config["mbps"]))
    else:
        result = step(device, config)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
