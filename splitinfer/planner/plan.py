"""A plan: immutable, printable as a table, and round-tripping through ``splitinfer.v1.ExecutionPlan``."""

from __future__ import annotations

from dataclasses import dataclass

from splitinfer.codecs import CodecSpec
from splitinfer.planner.cost import BASE_FLOOR_S, DEVICE, Assignment, Evaluation, base_seconds, service_seconds
from splitinfer.planner.problem import PlanningProblem
from splitinfer.v1 import plan_pb2, route_pb2

__all__ = ["ON_DEVICE", "CrossingChoice", "Placement", "Plan", "assignment_of", "make_plan"]

ON_DEVICE = "device"


@dataclass(frozen=True, slots=True)
class Placement:
    partition: str
    #: "device" or a server address.
    where: str
    predicted_ms: float
    #: FLOPs over the place's reported FLOP/s, uncalibrated: what calibration observes measurements against
    #: (0 when unknown, e.g. a plan from an older peer).
    base_ms: float = 0.0

    @property
    def on_device(self) -> bool:
        return self.where == ON_DEVICE


@dataclass(frozen=True, slots=True)
class CrossingChoice:
    tensor: str
    codec: CodecSpec
    predicted_bytes: int
    predicted_ms: float


@dataclass(frozen=True)
class Plan:
    model: str
    variant: str
    placements: tuple[Placement, ...]
    crossings: tuple[CrossingChoice, ...]
    predicted_latency_ms: float
    predicted_energy_j: float
    predicted_accuracy: float
    reason: str
    solver: str
    violated: tuple[str, ...] = ()
    route: route_pb2.Route | None = None
    #: The pool manifest of the division the placements' partitions belong to ("" when not from a pool).
    division_sha256: str = ""

    @property
    def feasible(self) -> bool:
        return not self.violated

    @property
    def device_partitions(self) -> list[str]:
        return [p.partition for p in self.placements if p.on_device]

    def summary(self) -> str:
        """One line: where things ran, the codecs, and the predictions."""
        where = " ".join(f"{p.partition}@{'dev' if p.on_device else p.where}" for p in self.placements)
        codecs = ",".join(f"{c.tensor}:{c.codec}" for c in self.crossings) or "-"
        return (
            f"{self.model}@{self.variant} [{where}] codecs {codecs}; {self.predicted_latency_ms:.1f} ms, "
            f"{self.predicted_energy_j * 1e3:.1f} mJ, acc {self.predicted_accuracy:.3f}"
        )

    def __str__(self) -> str:
        lines = [
            f"plan for {self.model}@{self.variant} by {self.solver}: {self.reason}",
            f"  {'partition':<12} {'where':<22} {'predicted ms':>12}",
        ]
        for p in self.placements:
            lines.append(f"  {p.partition:<12} {p.where:<22} {p.predicted_ms:>12.2f}")
        if self.crossings:
            lines.append(f"  {'crossing tensor':<20} {'codec':<12} {'bytes':>10} {'ms':>8}")
            for c in self.crossings:
                lines.append(f"  {c.tensor:<20} {c.codec!s:<12} {c.predicted_bytes:>10,} {c.predicted_ms:>8.2f}")
        status = "meets all requirements" if self.feasible else f"VIOLATES {', '.join(self.violated)}"
        lines.append(
            f"  predicted: {self.predicted_latency_ms:.2f} ms, {self.predicted_energy_j * 1e3:.2f} mJ on the "
            f"device, accuracy {self.predicted_accuracy:.3f}; {status}"
        )
        return "\n".join(lines)

    def to_proto(self) -> plan_pb2.ExecutionPlan:
        message = plan_pb2.ExecutionPlan(
            model=self.model,
            variant=self.variant,
            predicted_latency_ms=self.predicted_latency_ms,
            predicted_energy_j=self.predicted_energy_j,
            predicted_accuracy=self.predicted_accuracy,
            reason=self.reason,
            violated=list(self.violated),
            solver=self.solver,
            division_sha256=self.division_sha256,
        )
        for p in self.placements:
            message.placements.append(
                plan_pb2.Placement(
                    partition=route_pb2.PartitionRef(model=self.model, variant=self.variant, partition=p.partition),
                    on_device=p.on_device,
                    address="" if p.on_device else p.where,
                    predicted_ms=p.predicted_ms,
                    base_ms=p.base_ms,
                )
            )
        for c in self.crossings:
            message.crossings.append(
                plan_pb2.Crossing(
                    tensor_name=c.tensor,
                    encoding=c.codec.to_proto(),
                    predicted_bytes=c.predicted_bytes,
                    predicted_ms=c.predicted_ms,
                )
            )
        if self.route is not None:
            message.route.CopyFrom(self.route)
        return message

    @classmethod
    def from_proto(cls, message: plan_pb2.ExecutionPlan) -> Plan:
        return cls(
            model=message.model,
            variant=message.variant,
            placements=tuple(
                Placement(p.partition.partition, ON_DEVICE if p.on_device else p.address, p.predicted_ms, p.base_ms)
                for p in message.placements
            ),
            crossings=tuple(
                CrossingChoice(c.tensor_name, CodecSpec.from_proto(c.encoding), c.predicted_bytes, c.predicted_ms)
                for c in message.crossings
            ),
            predicted_latency_ms=message.predicted_latency_ms,
            predicted_energy_j=message.predicted_energy_j,
            predicted_accuracy=message.predicted_accuracy,
            reason=message.reason,
            solver=message.solver,
            violated=tuple(message.violated),
            route=message.route if message.HasField("route") else None,
            division_sha256=message.division_sha256,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self.to_proto() == other.to_proto()

    def __hash__(self) -> int:
        return hash(self.to_proto().SerializeToString(deterministic=True))


#: Replicas whose predicted compute time is within this factor of the chosen server's share its load.
EQUIVALENT_COMPUTE_FACTOR = 1.25
#: Slack of that comparison, seconds, over all of a server's partitions together: sets that take about a
#: millisecond differ by noise, not by capacity.
EQUIVALENT_SLACK_S = 1e-3


def _equivalent_replicas(problem: PlanningProblem, a: Assignment) -> dict[int, list[int]]:
    """Each server partition's replicas: the server the plan chose first, then every other server that
    hosts *all* the partitions the plan put on the chosen one and would run them, together, about as fast.
    The balancer spreads requests over them (identical replicas would otherwise sit idle behind one plan).

    All of one server's partitions get the same replicas, so a request that enters a replica runs every
    one of them there, whole, instead of hopping back to the chosen server for the partition where that
    replica's calibrated time happened to be a little slower (calibrated times of identical nodes on a
    busy host differ by their contention). About as fast means by what the servers are able to do
    (:func:`service_seconds`), not by the queue they reported when the plan was made: a plan lives for
    minutes and serves every request of its device, so a queue seen once would pin all of them to
    whichever replica was idler at that instant (a load benchmark saw all 64 devices' plans on one of two
    identical nodes, the other idle). Which replica takes each request is the balancer's choice, from the
    load it sees then.
    """
    variant = problem.variants[a.variant]
    n = len(variant.partitions)
    by_server: dict[int, list[int]] = {}
    for p in range(n):
        if a.location(p, n) != DEVICE:
            by_server.setdefault(a.location(p, n), []).append(p)
    replicas: dict[int, list[int]] = {}
    for chosen, parts in by_server.items():
        names = [variant.partitions[p].name for p in parts]
        own = sum(service_seconds(problem, variant, p, chosen) for p in parts)
        # One slack for the set (not one per partition: over many small partitions that let a server twice
        # as slow pass as an equal).
        limit = max(own * EQUIVALENT_COMPUTE_FACTOR, own + EQUIVALENT_SLACK_S)
        others = [
            k
            for k, s in enumerate(problem.servers)
            if k != chosen
            and all(s.can_run(variant.model, variant.variant, name) for name in names)
            and sum(service_seconds(problem, variant, p, k) for p in parts) <= limit
        ]
        for p in parts:
            replicas[p] = [chosen, *others]
    return replicas


def _route(problem: PlanningProblem, a: Assignment, codec_of: dict[str, CodecSpec]) -> route_pb2.Route:
    """The server part of the plan: one step per server partition, outputs routed to server consumers and
    delivered back when the device needs them."""
    variant = problem.variants[a.variant]
    n = len(variant.partitions)
    server_parts = [p for p in range(n) if a.location(p, n) != DEVICE]
    step_of = {p: i for i, p in enumerate(server_parts)}
    equivalent = _equivalent_replicas(problem, a)
    steps = []
    for p in server_parts:
        inputs = list(dict.fromkeys(e.tensor for e in variant.edges if e.dst == p))
        outputs: dict[str, route_pb2.TensorRoute] = {}
        for edge in variant.edges:
            if edge.src != p:
                continue
            route = outputs.setdefault(
                edge.tensor,
                route_pb2.TensorRoute(
                    tensor_name=edge.tensor, encoding=codec_of.get(edge.tensor, CodecSpec()).to_proto()
                ),
            )
            if a.location(edge.dst, n) == DEVICE:
                route.deliver = True
            elif edge.dst in step_of and step_of[edge.dst] not in route.consumer_steps:
                route.consumer_steps.append(step_of[edge.dst])
        steps.append(
            route_pb2.RouteStep(
                partition=route_pb2.PartitionRef(
                    model=variant.model, variant=variant.variant, partition=variant.partitions[p].name
                ),
                addresses=[problem.servers[k].address for k in equivalent[p]],
                fallback_addresses=[
                    s.address
                    for k, s in enumerate(problem.servers)
                    if k not in equivalent[p] and s.can_run(variant.model, variant.variant, variant.partitions[p].name)
                ],
                input_names=inputs,
                outputs=list(outputs.values()),
            )
        )
    return route_pb2.Route(steps=steps)


def make_plan(problem: PlanningProblem, a: Assignment, ev: Evaluation, solver: str, reason: str) -> Plan:
    variant = problem.variants[a.variant]
    n = len(variant.partitions)
    codec_index = dict(a.codecs)
    placements = tuple(
        Placement(
            variant.partitions[p].name,
            ON_DEVICE if a.location(p, n) == DEVICE else problem.servers[a.location(p, n)].address,
            ev.compute_s[p] * 1e3,
            max(base_seconds(problem, variant, p, a.location(p, n)), BASE_FLOOR_S) * 1e3,
        )
        for p in range(n)
    )
    codec_of = {t: problem.codecs[codec_index.get(t, 0)].codec for t in ev.crossing}
    crossings = tuple(
        CrossingChoice(t, codec_of[t], wire, seconds * 1e3) for t, (wire, seconds) in sorted(ev.crossing.items())
    )
    return Plan(
        model=variant.model,
        variant=variant.variant,
        placements=placements,
        crossings=crossings,
        predicted_latency_ms=ev.latency_s * 1e3,
        predicted_energy_j=ev.energy_j,
        predicted_accuracy=ev.accuracy,
        reason=reason,
        solver=solver,
        violated=ev.violated,
        route=_route(problem, a, codec_of) if any(a.location(p, n) != DEVICE for p in range(n)) else None,
    )


def assignment_of(problem: PlanningProblem, plan: Plan) -> Assignment:
    """The assignment a plan stands for in ``problem`` (to score it again under other conditions)."""
    v = next(i for i, var in enumerate(problem.variants) if var.variant == plan.variant and var.model == plan.model)
    index = {s.address: k for k, s in enumerate(problem.servers)}
    locations = tuple(DEVICE if p.on_device else index[p.where] for p in plan.placements)
    names = [str(c.codec) for c in problem.codecs]
    return Assignment(v, locations, tuple((c.tensor, names.index(str(c.codec))) for c in plan.crossings))
