"""The cost model: predicted latency, device energy and accuracy of one assignment.

An assignment picks a variant, a head ``[0, head_end)`` and a tail ``[tail_start, n)`` of its partitions for
the device (a prefix and a suffix of a topological order are always consistent cuts of the DAG), a server
for each partition in between, and a codec for each tensor that crosses between places.

Latency is the sum, in topological order, of compute (device or server, plus the server's queue), transfers
(uplink, downlink or server link, with half an RTT per device crossing) and codec work; partitions are
assumed to run one after another, which is exact for chains and an upper bound for parallel branches.
Device energy is compute time x compute power, transmit time x transmit power, and receive time x half the
transmit power. Accuracy is the variant's less the drop of every lossy codec a tensor crosses with.

Every solver scores with :func:`evaluate`; the CP-SAT model is built from the same term functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitinfer.planner.problem import CodecProfile, PlanningProblem, VariantProfile

__all__ = [
    "BASE_FLOOR_S",
    "DEVICE",
    "Assignment",
    "Evaluation",
    "base_seconds",
    "better",
    "compute_terms",
    "crossing_tensors",
    "energy_weight_s_per_j",
    "evaluate",
    "partition_key",
    "rank_less",
    "request_overhead_s",
    "service_seconds",
    "transfer_terms",
    "violation_of",
]

#: Location index of the device; servers are 0..S-1.
DEVICE = -1
#: Violation units per unit of accuracy below the floor (a latency excess counts relative to the budget).
ACCURACY_VIOLATION_WEIGHT = 10.0
#: Two violations or objectives closer than this compare equal (float noise, not a real difference).
RANK_TOLERANCE = 1e-12
#: Tie-breaker: seconds of objective per unit of accuracy (1 ms for the whole range), so that among equally
#: fast plans the more accurate one wins.
ACCURACY_TIEBREAK_S = 1e-3
#: Receiving costs this fraction of the transmit power.
RECEIVE_POWER_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class Assignment:
    variant: int
    #: Where each partition runs: DEVICE or a server index. The planner's solvers keep the device's share a
    #: head and/or a tail; baselines such as DADS may place any set of partitions on the device.
    locations: tuple[int, ...]
    #: Codec index per crossing tensor name (tensors not listed use codec 0).
    codecs: tuple[tuple[str, int], ...]

    def location(self, partition: int, n: int) -> int:
        if partition < 0 or partition >= n:
            return DEVICE  # the model's input comes from, and its output goes to, the device
        return self.locations[partition]


@dataclass(frozen=True, slots=True)
class Evaluation:
    latency_s: float
    energy_j: float
    accuracy: float
    device_compute_s: float
    transfer_s: float
    violated: tuple[str, ...]
    #: How far the requirements are missed: latency excess / budget + 10 x accuracy shortfall; 0 when met.
    violation: float
    #: What is minimised among plans of equal violation: latency + energy weight x energy + accuracy
    #: tie-break. Plans compare lexicographically, violation first (:func:`better`), so any plan that meets
    #: the requirements beats any plan that does not, whatever the objective.
    objective: float
    #: Per partition: seconds of compute (queue included).
    compute_s: tuple[float, ...]
    #: Per crossing tensor: (bytes on the wire, seconds) summed over its destinations.
    crossing: dict[str, tuple[int, float]]


def energy_weight_s_per_j(problem: PlanningProblem) -> float:
    """How many seconds of latency one joule of device energy is worth for this request.

    "latency": 0. "energy": 1000 (energy decides). "auto": 0 on mains or charging, else rising with the drained
    fraction of the battery squared, up to 10 s/J when empty.
    """
    objective = problem.requirements.objective
    if objective == "latency":
        return 0.0
    if objective == "energy":
        return 1000.0
    device = problem.device
    if device.charging:
        return 0.0
    drained = max(0.0, min(1.0, 1.0 - device.battery_percent / 100.0))
    return 10.0 * drained**2


def transfer_terms(
    problem: PlanningProblem, src: int, dst: int, nbytes: int, codec: CodecProfile, size_ratio: float | None = None
) -> tuple[float, float, float, float]:
    """(latency s, device transmit s, device receive s, device codec s) for one tensor between locations;
    ``size_ratio`` (the tensor's own, :meth:`Edge.size_ratio`) overrides the codec's typical one."""
    if src == dst:
        return 0.0, 0.0, 0.0, 0.0
    wire = nbytes * (codec.size_ratio if size_ratio is None else size_ratio) * 8
    device = problem.device
    if src == DEVICE:
        link = wire / (device.uplink_mbps * 1e6) + device.rtt_ms / 2e3
        codec_s = nbytes * codec.seconds_per_byte * problem.device_codec_slowdown
        return link + codec_s, link, 0.0, codec_s
    if dst == DEVICE:
        link = wire / (device.downlink_mbps * 1e6) + device.rtt_ms / 2e3
        codec_s = nbytes * codec.seconds_per_byte * problem.device_codec_slowdown
        return link + codec_s, 0.0, link, codec_s
    link = wire / (problem.server_link_mbps * 1e6) + (problem.server_link_ms + problem.server_hop_ms) / 1e3
    return link + nbytes * codec.seconds_per_byte, 0.0, 0.0, 0.0


#: Base times below this many seconds count as this much when a measured factor scales them, so that a
#: partition of (almost) no FLOPs still carries its measured time (:mod:`splitinfer.planner.calibration`
#: uses the same floor).
BASE_FLOOR_S = 1e-6


def request_overhead_s(problem: PlanningProblem, offloaded: bool) -> float:
    """The device's calibrated per-request overhead for a plan that uses servers (``offloaded``) or not."""
    device = problem.device
    return (device.offload_overhead_ms if offloaded else device.local_overhead_ms) / 1e3


def partition_key(variant: VariantProfile, partition: int) -> str:
    return f"{variant.model}@{variant.variant}/{variant.partitions[partition].name}"


def base_seconds(problem: PlanningProblem, variant: VariantProfile, partition: int, location: int) -> float:
    """The uncalibrated prediction: FLOPs over the place's reported FLOP/s (no queue, ratio or fixed cost)."""
    flops = variant.partitions[partition].flops
    place = problem.device if location == DEVICE else problem.servers[location]
    return flops / place.flops


def service_seconds(problem: PlanningProblem, variant: VariantProfile, partition: int, location: int) -> float:
    """Predicted seconds of compute of one partition at one place once it runs (no queue): what the place
    itself is able to do, however busy it is now.

    A partition measured at that place takes its measured factor x its base time; any other takes the
    place's calibrated ratio x base time plus the place's fixed per-partition cost.
    """
    base = base_seconds(problem, variant, partition, location)
    place = problem.device if location == DEVICE else problem.servers[location]
    factor = place.factor(partition_key(variant, partition)) if place.partition_factors else None
    return max(base, BASE_FLOOR_S) * factor if factor is not None else base * place.compute_ratio + place.fixed_ms / 1e3


def compute_terms(problem: PlanningProblem, variant: VariantProfile, partition: int, location: int) -> float:
    """Predicted seconds of compute of one partition at one place, a server's reported queue included
    (:func:`service_seconds` plus the wait)."""
    seconds = service_seconds(problem, variant, partition, location)
    if location == DEVICE:
        return seconds
    return seconds + problem.servers[location].queue_ms / 1e3


def crossing_tensors(variant: VariantProfile, locations: tuple[int, ...]) -> list[str]:
    """Tensors with at least one edge between two different places under ``locations``."""
    n = len(variant.partitions)

    def loc(p: int) -> int:
        return DEVICE if p < 0 or p >= n else locations[p]

    names: list[str] = []
    for edge in variant.edges:
        if loc(edge.src) != loc(edge.dst) and edge.tensor not in names:
            names.append(edge.tensor)
    return names


def violation_of(problem: PlanningProblem, latency_s: float, accuracy: float) -> tuple[tuple[str, ...], float]:
    """(requirements missed, violation) of a plan with this latency and accuracy."""
    violated: list[str] = []
    violation = 0.0
    req = problem.requirements
    if req.max_latency_ms > 0 and latency_s * 1e3 > req.max_latency_ms * (1 + 1e-12):
        violated.append("max_latency_ms")
        violation += (latency_s * 1e3 - req.max_latency_ms) / req.max_latency_ms
    if req.min_accuracy > 0 and accuracy < req.min_accuracy - 1e-12:
        violated.append("min_accuracy")
        violation += (req.min_accuracy - accuracy) * ACCURACY_VIOLATION_WEIGHT
    return tuple(violated), violation


def better(a: Evaluation, b: Evaluation | None) -> bool:
    """Whether ``a`` is strictly better than ``b`` (None: nothing yet): less violation, else a lower
    objective (differences within RANK_TOLERANCE, relative, are ties)."""
    if b is None:
        return True
    return rank_less((a.violation, a.objective), (b.violation, b.objective))


def rank_less(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Lexicographic (violation, objective) order with a relative tolerance on each."""
    if a[0] < b[0] - RANK_TOLERANCE * max(1.0, abs(b[0])):
        return True
    if a[0] > b[0] + RANK_TOLERANCE * max(1.0, abs(b[0])):
        return False
    return a[1] < b[1] - RANK_TOLERANCE * max(1.0, abs(b[1]))


def evaluate(problem: PlanningProblem, a: Assignment) -> Evaluation:
    variant = problem.variants[a.variant]
    n = len(variant.partitions)
    codecs = dict(a.codecs)
    compute = []
    device_compute = 0.0
    for p in range(n):
        loc = a.location(p, n)
        seconds = compute_terms(problem, variant, p, loc)
        compute.append(seconds)
        if loc == DEVICE:
            device_compute += seconds
    latency = sum(compute) + request_overhead_s(problem, any(a.location(p, n) != DEVICE for p in range(n)))
    transmit = receive = device_codec = transfer = 0.0
    accuracy = variant.accuracy
    crossing: dict[str, tuple[int, float]] = {}
    lossy_crossed: set[str] = set()
    for edge in variant.edges:
        src, dst = a.location(edge.src, n), a.location(edge.dst, n)
        if src == dst:
            continue
        codec = problem.codecs[codecs.get(edge.tensor, 0)]
        seconds, tx, rx, dev_codec = transfer_terms(problem, src, dst, edge.nbytes, codec, edge.size_ratio(codec))
        latency += seconds
        transfer += seconds
        transmit += tx
        receive += rx
        device_codec += dev_codec
        wire, total = crossing.get(edge.tensor, (0, 0.0))
        crossing[edge.tensor] = (wire + round(edge.nbytes * edge.size_ratio(codec)), total + seconds)
        if codec.codec.is_lossy and edge.tensor not in lossy_crossed:
            lossy_crossed.add(edge.tensor)
            accuracy -= codec.drop(variant.variant)
    device = problem.device
    energy = (
        (device_compute + device_codec) * device.compute_power_w
        + transmit * device.transmit_power_w
        + receive * device.transmit_power_w * RECEIVE_POWER_FRACTION
    )
    violated, violation = violation_of(problem, latency, accuracy)
    objective = latency + energy_weight_s_per_j(problem) * energy + ACCURACY_TIEBREAK_S * (1 - accuracy)
    return Evaluation(
        latency_s=latency,
        energy_j=energy,
        accuracy=accuracy,
        device_compute_s=device_compute,
        transfer_s=transfer,
        violated=violated,
        violation=violation,
        objective=objective,
        compute_s=tuple(compute),
        crossing=crossing,
    )
