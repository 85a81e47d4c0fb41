"""A live re-division, end to end: the device population shifts, the division controller re-divides the model,
rolls the new division out to the nodes while requests keep flowing, and the new population gets faster.

Used by ``make demo`` (its re-division phase), ``benchmarks/redivision.py`` and the integration test. Everything
is real except the devices' speed and uplink, which are emulated by the edge agent (its compute slowdown and
emulated uplink) as in the rest of the demo:

- the model (:class:`Funnel`) has a cheap stem that squeezes a 48 KB input to a 4 KB tensor, then a heavy body;
- *cameras* (slow compute, fast uplink) are best served by sending their input: the division they shape needs
  no head cut;
- *phones* (faster compute, a 2 Mbit/s uplink) are best served by running the stem and sending the squeezed
  tensor, which needs a partition boundary after the squeeze that the cameras' division does not have.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from server_node.config import NodeConfig
from server_node.server import RunningNode, start_node
from splitinfer.controller.controller import DivisionController
from splitinfer.controller.daemon import GrpcNodeOps, frontend_activity
from splitinfer.controller.placement import placement
from splitinfer.controller.policy import ControllerConfig
from splitinfer.divider import ServerCapacity, divide
from splitinfer.frontend.server import FrontEndConfig, RunningFrontEnd, start_frontend
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.pool.sources import put_source
from splitinfer.program import export_program
from splitinfer.registry import EmbeddedRegistry
from splitinfer.runtime import PartitionKey
from splitinfer.testbed import ModelledDevice
from splitinfer.transport.clients import NodeClient
from splitinfer.v1 import plan_pb2

__all__ = ["MODEL", "Funnel", "PhaseResult", "RedivisionSystem", "redivision_phase", "redivision_system"]

MODEL = "funnel"
VARIANT = "fp32"
#: Declared accuracy of the variant, and what requests ask for: lossless codecs only (a lossy codec on the
#: input would blur the difference the division makes, and the scenario is about the division).
ACCURACY = 0.9
REQUIREMENTS = plan_pb2.Requirements(min_accuracy=0.895)


class Funnel(nn.Module):
    """Stem (3->8 channels at 64x64), squeeze to 4x16x16 (4 KB), then four 1024-wide layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze = nn.Conv2d(8, 4, 4, stride=4)
        self.body = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(1024, 1024), nn.ReLU())])
        self.head = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.flatten(torch.relu(self.squeeze(torch.relu(self.stem(x)))), 1)))


def funnel() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return Funnel().eval(), (torch.randn(1, 3, 64, 64),)


@dataclass(frozen=True)
class DeviceKind:
    """A class of emulated devices of fixed speed (``splitinfer.testbed.ModelledDevice``): independent of how
    busy the machine running the emulation is, so that predictions and measurements can be compared."""

    device_class: str
    compute_flops: float
    uplink_mbps: float


CAMERA = DeviceKind("camera", compute_flops=5e7, uplink_mbps=100.0)
PHONE = DeviceKind("phone", compute_flops=1.5e8, uplink_mbps=2.0)


@dataclass
class PhaseResult:
    device_class: str
    #: Warm requests only (the first requests after a plan change pull partitions and are not counted).
    latencies_ms: list[float]
    failures: int
    plans: list[str] = field(default_factory=list)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


@dataclass
class RedivisionSystem:
    root: Path
    pool: ModelPool
    registry: EmbeddedRegistry
    nodes: list[RunningNode]
    frontend: RunningFrontEnd
    controller: DivisionController
    example: torch.Tensor
    model: nn.Module
    machine_flops: float
    agents: dict[str, EdgeAgent] = field(default_factory=dict)

    _flops: dict[str, float] = field(default_factory=dict)

    def partition_flops(self, partition: str) -> float:
        """FLOPs of a partition of any division version of the funnel, old ones included (their names are
        unique; a device may still run an old version's partition while the new one rolls out)."""
        if partition not in self._flops:
            for entry in self.pool.variants(MODEL):
                for sha in entry.divisions.values():
                    for part in self.pool.division(sha).partitions:
                        self._flops[part.name] = float(part.flops)
        return self._flops[partition]

    def agent(self, kind: DeviceKind, index: int = 0) -> EdgeAgent:
        key = f"{kind.device_class}-{index}"
        if key not in self.agents:
            self.agents[key] = EdgeAgent(
                AgentConfig(
                    device_id=key,
                    device_class=kind.device_class,
                    frontend=self.frontend.address,
                    pool=self.frontend.address,
                    cache_dir=str(self.root / "agents" / key),
                    emulated_uplink_mbps=kind.uplink_mbps,  # what the device reports as its uplink
                    plan_ttl_s=1.0,
                    prefetch_fallback=False,
                ),
                compute_flops=kind.compute_flops,
                hook=ModelledDevice(kind.compute_flops, kind.uplink_mbps, self.partition_flops),
            )
        return self.agents[key]

    def traffic(self, kind: DeviceKind, requests: int, *, warmup: int = 3, devices: int = 1) -> PhaseResult:
        """``requests`` requests from each of ``devices`` devices of ``kind``, in turn; the first ``warmup``
        of each device are not timed (plans, partition pulls)."""
        result = PhaseResult(kind.device_class, [], 0)
        for i in range(requests + warmup):
            for d in range(devices):
                agent = self.agent(kind, d)
                try:
                    answer = agent.infer(MODEL, {"x": self.example}, REQUIREMENTS)
                except Exception:
                    result.failures += 1
                    continue
                if answer.device_only_fallback:
                    result.failures += 1
                elif i >= warmup:
                    result.latencies_ms.append(answer.total_ms)
                    if answer.plan is not None and answer.plan.summary() not in result.plans:
                        result.plans.append(answer.plan.summary())
        return result

    def check_outputs(self, kind: DeviceKind) -> bool:
        answer = self.agent(kind).infer(MODEL, {"x": self.example}, REQUIREMENTS)
        expected = self.model(self.example).detach()
        return bool(torch.allclose(next(iter(answer.outputs.values())), expected, atol=1e-4))

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()


def effective_flops(model: nn.Module, example: torch.Tensor, total_flops: float, runs: int = 30) -> float:
    """This machine's throughput on this model (its FLOPs over the median time of a warm run): what the
    emulated devices are slowed down from, so that their reported compute matches what they do. A matmul
    benchmark overstates it several times for batch-1 layers."""
    timings = []
    with torch.no_grad():
        for _ in range(5):
            model(example)
        for _ in range(runs):
            start = time.perf_counter()
            model(example)
            timings.append(time.perf_counter() - start)
    return total_flops / statistics.median(timings)


def deploy_division(pool: ModelPool, nodes: list[RunningNode], pool_address: str) -> None:
    """Loads the live division of the funnel onto the nodes as the Divider placed it."""
    sha = pool.resolve(MODEL, VARIANT, "default")
    division = pool.division(sha)
    placed = placement([(p.name, p.host) for p in division.partitions], [(n.address, n.address) for n in nodes])
    for name, addresses in placed.items():
        for address in addresses:
            with NodeClient(address) as client:
                client.load_partition(f"pool://{pool_address}/{sha}/{name}", PartitionKey(MODEL, VARIANT, name))
    for node in nodes:
        node.publish()


@contextmanager
def redivision_system(
    root: Path | None = None, controller_config: ControllerConfig | None = None
) -> Iterator[RedivisionSystem]:
    """Two nodes, a front-end, the division controller (driven by the caller: ``system.controller.step()``) and
    the funnel divided for two servers as the cameras need it."""
    with ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitinfer-redivision-")))
        model, (example,) = funnel()
        program = export_program(model, (example,))
        pool = ModelPool(root / "pool")
        graph = ModelGraph.build(program)
        flops = effective_flops(model, example, graph.total_flops)
        servers = [ServerCapacity("edge", flops, 1 << 34), ServerCapacity("cloud", flops, 1 << 34)]
        division = divide(graph, MODEL, servers)
        pool.add_division(division, variant=VARIANT, division_name="default", task="funnel", accuracy=ACCURACY)
        put_source(pool, MODEL, VARIANT, program)
        registry = EmbeddedRegistry()
        nodes: list[RunningNode] = []
        for _ in range(2):
            node = start_node(NodeConfig(torch_threads=1, benchmark_s=0.05, status_interval_s=0.2), registry=registry)
            stack.callback(node.stop, 0.5)
            nodes.append(node)
        frontend = start_frontend(
            FrontEndConfig(pool_dir=str(pool.root), results_db=str(root / "results.db"), plan_ttl_s=20.0),
            registry=registry,
        )
        stack.callback(frontend.stop, 0.5)
        deploy_division(pool, nodes, frontend.address)
        deadline = time.monotonic() + 10
        while len(registry.servers()) < len(nodes) or not all(r.partitions for r in registry.servers().values()):
            if time.monotonic() > deadline:
                raise TimeoutError("the nodes did not report their partitions")
            time.sleep(0.05)
        config = controller_config or ControllerConfig(
            models=(f"{MODEL}@{VARIANT}",), min_requests=10, min_interval_s=5.0, drain_s=25.0, drain_timeout_s=10.0
        )
        controller = DivisionController(
            config,
            pool,
            servers=registry.servers,
            activity=frontend_activity(lambda: [frontend.address]),
            nodes=GrpcNodeOps(timeout_s=config.rpc_timeout_s),
            pool_address=frontend.address,
        )
        system = RedivisionSystem(root, pool, registry, nodes, frontend, controller, example, model, flops)
        system.partition_flops(division.partitions[0].name)  # the first version's partitions, before any switch
        stack.callback(system.close)
        yield system


def redivision_phase(work: Path, console: Console, requests: int = 12) -> bool:
    """``make demo``'s re-division phase: the population shifts from cameras to phones and the division
    follows, live. True when the controller re-divided, nothing failed, and the phones got faster."""
    console.rule("[bold]phase re-division: the device population shifts from cameras to phones")
    config = ControllerConfig(models=(f"{MODEL}@{VARIANT}",), min_requests=10, min_interval_s=5.0, drain_s=3.0,
                              drain_timeout_s=10.0)  # fmt: skip
    with redivision_system(work, config) as system:
        controller, state = system.controller, system.controller.states[f"{MODEL}@{VARIANT}"]
        cameras = system.traffic(CAMERA, requests)
        controller.step()
        console.print(f"  cameras: median {cameras.median_ms:.1f} ms on division v{state.version}")
        before = system.traffic(PHONE, requests)
        console.print(f"  phones arrive: median {before.median_ms:.1f} ms on division v{state.version}", markup=False)
        controller.step()
        console.print(f"  controller: {state.last_evaluation}", markup=False)
        deadline = time.monotonic() + 60
        while state.rollout and "done" not in state.rollout and time.monotonic() < deadline:
            time.sleep(0.5)
            controller.step()
        console.print(f"  rollout {state.rollout or 'none'}", markup=False)
        after = system.traffic(PHONE, requests)
        console.print(
            f"  phones now: median {after.median_ms:.1f} ms on division v{state.version}; "
            f"plan {after.plans[-1] if after.plans else '-'}",
            markup=False,
        )
        failures = cameras.failures + before.failures + after.failures
        ok = state.version == 2 and failures == 0 and after.median_ms < before.median_ms
        console.print("[green]re-divided live, the phones got faster[/]" if ok else "[red]no useful re-division[/]")
        return ok
