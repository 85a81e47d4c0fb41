"""The division controller: re-divides models as the active devices and the servers change, and rolls the
new division out live.

Each :meth:`DivisionController.step` does, for every managed "model@variant":
1. advance a rollout in progress (see :mod:`splitinfer.controller.rollout`), or else
2. read the live request mix (per device class, from the front-ends) and the live servers (from the
   registry), ask the :class:`~splitinfer.controller.policy.DivisionPolicy` whether they moved away from the
   basis of the division in force, and if so divide the variant's whole program again for them (the Divider,
   with the active classes' head cuts as required boundaries), predict both divisions' mean latency over the
   observed mix with the planner's cost model, and start a rollout when the policy adopts the candidate.

Everything it decides is kept in :class:`ModelState` and published as :class:`ControllerStatus` (JSON in the
pool directory, read by the front-end's status and by ``cluster-status``): the version in force, when and
why it changed (the mix and servers that triggered it, the predicted gain), the last rejected candidate, and
the rollout's progress.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitinfer.controller.activity import ClassActivity
from splitinfer.controller.placement import placement
from splitinfer.controller.policy import Basis, ControllerConfig, DivisionPolicy
from splitinfer.controller.predict import MixPrediction, predict_mix
from splitinfer.controller.rollout import NodeOps, Rollout, RolloutPhase
from splitinfer.divider import DeviceClass, DivideOptions, Division, ServerCapacity, active_head_cuts, divide
from splitinfer.errors import NotFound, SplitInferError
from splitinfer.graph import ModelGraph
from splitinfer.planner.build import variant_from_division, variant_profile
from splitinfer.planner.problem import ServerProfile
from splitinfer.pool import ModelPool
from splitinfer.pool.pool import VariantEntry
from splitinfer.pool.sources import get_source
from splitinfer.registry import ServerRecord

__all__ = ["STATUS_FILE", "ControllerStatus", "DivisionController", "ModelState", "read_status", "versioned"]

log = logging.getLogger("splitinfer.controller")

#: Where the controller publishes its status, inside the pool directory.
STATUS_FILE = "controller-status.json"
#: The division name the planner reads; the controller moves it from version to version.
LIVE_DIVISION = "default"
#: Events kept per model in the published history.
HISTORY_LENGTH = 20


def versioned(division: Division, version: int) -> Division:
    """``division`` with its partitions renamed ``v{version}-p0`` ...: a new version's partitions can be loaded
    on a node beside the old ones (a node hosts partitions by model, variant and partition name)."""
    names = {p.name: f"v{version}-{p.name}" for p in division.partitions}
    partitions = tuple(
        dataclasses.replace(
            p, name=names[p.name], successors=tuple((t, tuple(names[s] for s in to)) for t, to in p.successors)
        )
        for p in division.partitions
    )
    return dataclasses.replace(division, partitions=partitions)


@dataclass
class ModelState:
    """What the controller knows and did for one managed model variant."""

    model: str
    variant: str
    version: int = 1
    division_sha: str = ""
    changed_unix_s: float = 0.0
    reason: str = "the division it started with"
    predicted_gain: float = 0.0
    predicted_before: str = ""
    predicted_after: str = ""
    basis: str = ""
    last_evaluation: str = ""
    #: Candidate divisions computed and weighed so far.
    evaluations: int = 0
    rollout: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ControllerStatus:
    models: tuple[ModelState, ...]
    updated_unix_s: float

    def to_json(self) -> dict[str, Any]:
        return {"updated_unix_s": self.updated_unix_s, "models": [m.to_json() for m in self.models]}

    def lines(self) -> list[str]:
        """The status as a person reads it (``cluster-status``, the front-end's status)."""
        out = []
        for m in self.models:
            when = time.strftime("%H:%M:%S", time.localtime(m.changed_unix_s)) if m.changed_unix_s else "-"
            out.append(f"{m.model}@{m.variant}: division v{m.version} since {when} ({m.reason})")
            if m.predicted_after:
                out.append(f"  predicted {m.predicted_before} -> {m.predicted_after} (gain {m.predicted_gain:.0%})")
            if m.rollout:
                out.append(f"  rollout {m.rollout}")
            if m.last_evaluation:
                out.append(f"  last evaluation: {m.last_evaluation}")
        return out


def read_status(pool_root: Path) -> ControllerStatus | None:
    """The status a controller published into this pool directory, or None when none runs on it."""
    path = pool_root / STATUS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(ModelState)}
    models = tuple(ModelState(**{k: v for k, v in m.items() if k in fields}) for m in data.get("models", []))
    return ControllerStatus(models, float(data.get("updated_unix_s", 0.0)))


def _hosted(records: Mapping[str, ServerRecord]) -> dict[str, list[str]]:
    hosts: dict[str, list[str]] = {}
    for address, record in sorted(records.items()):
        for key in record.partitions:
            hosts.setdefault(key, []).append(address)
    return hosts


class DivisionController:
    """See the module docstring. ``servers`` returns the live nodes (the registry's records), ``activity`` the
    live mix (per device class over the front-ends' window), ``nodes`` loads and unloads partitions, and
    ``pool_address`` is the ModelPoolService nodes pull artifacts from."""

    def __init__(
        self,
        config: ControllerConfig,
        pool: ModelPool,
        *,
        servers: Callable[[], Mapping[str, ServerRecord]],
        activity: Callable[[], Mapping[str, ClassActivity]],
        nodes: NodeOps,
        pool_address: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not config.models:
            raise ValueError("the controller needs at least one model to manage (models: ['model@variant'])")
        self.config = config
        self.pool = pool
        self._servers = servers
        self._activity = activity
        self._nodes = nodes
        self._pool_address = pool_address
        self._clock = clock
        self._wall = wall_clock
        self._policies: dict[str, DivisionPolicy] = {}
        self._rollouts: dict[str, Rollout] = {}
        self.states: dict[str, ModelState] = {}
        for entry in config.models:
            model, _, variant = entry.partition("@")
            self._policies[entry] = DivisionPolicy(config)
            self.states[entry] = ModelState(model, variant)
        self._graphs: dict[str, ModelGraph] = {}
        #: Per model with a rollout in progress: (new sha, reason, basis, predictions before/after, gain).
        self._pending: dict[str, tuple[str, str, Basis, MixPrediction, MixPrediction, float]] = {}

    # --- the loop ------------------------------------------------------------------------------------------

    def step(self) -> None:
        """One pass of the control loop over every managed model; errors are logged and published, never
        raised (the loop must go on)."""
        for entry in self.config.models:
            try:
                self._step_model(entry)
            except SplitInferError as exc:
                self.states[entry].last_evaluation = f"error: {exc}"[:500]
                log.warning("controller step for %s failed: %s", entry, exc)
        self.publish()

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            started = self._clock()
            self.step()
            time.sleep(max(0.0, self.config.interval_s - (self._clock() - started)))

    def status(self) -> ControllerStatus:
        return ControllerStatus(tuple(self.states[e] for e in self.config.models), self._wall())

    def publish(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.pool.root, prefix=".controller-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.status().to_json(), f, indent=1, sort_keys=True)
        os.replace(tmp, self.pool.root / STATUS_FILE)

    # --- one model -----------------------------------------------------------------------------------------

    def _step_model(self, entry: str) -> None:
        state = self.states[entry]
        rollout = self._rollouts.get(entry)
        if rollout is not None:
            self._advance(entry, rollout)
            return
        current_sha = self.pool.resolve(state.model, state.variant, LIVE_DIVISION)
        if not state.division_sha:
            state.division_sha = current_sha
        records = dict(self._servers())
        current = self.pool.division(current_sha)
        hosted = _hosted(records)
        served = all(
            part.host == "device" or hosted.get(f"{state.model}@{state.variant}/{part.name}")
            for part in current.partitions
        )
        mix = dict(self._activity())
        total = sum(a.requests for a in mix.values())
        if served and total < self.config.min_requests:
            return  # too little traffic to trust the mix
        all_rate = sum(a.requests_per_s for a in mix.values())
        active = {
            name: a
            for name, a in mix.items()
            if all_rate > 0 and a.requests_per_s / all_rate >= self.config.min_request_share
        }
        observed = Basis(
            mix={name: a.requests_per_s for name, a in active.items()},
            servers={address: r.compute_flops for address, r in records.items()},
        )
        policy = self._policies[entry]
        now = self._clock()
        trigger = policy.trigger(observed, now, current_served=served)
        if trigger is None:
            return
        if not records:
            state.last_evaluation = "no live server to divide onto"
            return
        state.evaluations += 1
        candidate = self._divide(state, records, active)
        addresses = sorted(records)
        placed = placement([(p.name, p.host) for p in candidate.partitions], [(a, a) for a in addresses],
                           self.config.replicas)  # fmt: skip
        candidate_servers = [
            ServerProfile(
                address=address,
                flops=records[address].compute_flops or 1e9,
                hosts=frozenset(
                    f"{state.model}@{state.variant}/{name}" for name, where in placed.items() if address in where
                ),
            )
            for address in addresses
        ]
        current_servers = [
            ServerProfile(address=a, flops=r.compute_flops or 1e9, hosts=frozenset(r.partitions))
            for a, r in sorted(records.items())
        ]
        accuracy = self._entry(state).accuracy
        before = predict_mix(variant_profile(self.pool.manifest(current_sha)), current_servers, active,
                             server_link_mbps=self.config.server_link_mbps)  # fmt: skip
        after = predict_mix(variant_from_division(candidate, state.variant, accuracy), candidate_servers, active,
                            server_link_mbps=self.config.server_link_mbps)  # fmt: skip
        before_ms = before.mean_ms if served else math.inf
        adopt, gain = policy.adopt(before_ms, after.mean_ms)
        evaluation = (
            f"{trigger.reason}: current {before.describe() if served else 'not served'}, "
            f"candidate {after.describe()}, predicted gain {gain:.0%}"
        )
        state.last_evaluation = ("adopted: " if adopt else "kept the current division: ") + evaluation
        log.info("%s %s", entry, state.last_evaluation)
        if not adopt:
            policy.rejected(observed)
            return
        self._start_rollout(entry, candidate, placed, records, trigger.reason, observed, before, after, gain)

    def _entry(self, state: ModelState) -> VariantEntry:
        for entry in self.pool.variants(state.model):
            if entry.model == state.model and entry.variant == state.variant:
                return entry
        raise NotFound(f"{state.model}@{state.variant} is not in the pool")

    def _divide(
        self, state: ModelState, records: Mapping[str, ServerRecord], active: Mapping[str, ClassActivity]
    ) -> Division:
        key = f"{state.model}@{state.variant}"
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = ModelGraph.build(get_source(self.pool, state.model, state.variant))
        servers = [
            ServerCapacity(name=address, flops=r.compute_flops or 1e9, memory_bytes=max(1, r.memory_available_bytes))
            for address, r in sorted(records.items())
        ]
        devices = [
            DeviceClass(
                name=a.device_class,
                flops=a.compute_flops or 1.0,
                memory_bytes=a.memory_bytes or 1 << 32,
                uplink_mbps=a.uplink_mbps or 1.0,
                request_rate=a.requests_per_s,
            )
            for a in active.values()
            if a.compute_flops > 0  # a class that runs nothing has no head to cut
        ]
        options = DivideOptions(link_mbps=self.config.server_link_mbps, min_request_share=self.config.min_request_share)
        heads = active_head_cuts(graph, devices, max(s.flops for s in servers), options) if devices else {}
        division = divide(graph, state.model, servers, required=sorted(set(heads.values())), options=options)
        return versioned(division, state.version + 1)

    def _start_rollout(
        self,
        entry: str,
        candidate: Division,
        placed: Mapping[str, list[str]],
        records: Mapping[str, ServerRecord],
        reason: str,
        observed: Basis,
        before: MixPrediction,
        after: MixPrediction,
        gain: float,
    ) -> None:
        state = self.states[entry]
        version = state.version + 1
        accuracy_entry = self._entry(state)
        sha = self.pool.add_division(
            candidate,
            variant=state.variant,
            division_name=f"v{version}",
            task=accuracy_entry.task,
            accuracy=accuracy_entry.accuracy,
            accuracy_measured=accuracy_entry.accuracy_measured,
            onnx=self.config.onnx,
        )
        prefix = f"{state.model}@{state.variant}/"
        loads = {
            f"{prefix}{name}": (f"pool://{self._pool_address}/{sha}/{name}", tuple(addresses))
            for name, addresses in placed.items()
        }
        old_names = {f"{prefix}{p.name}" for p in self.pool.division(state.division_sha).partitions}
        old_hosts = {key: tuple(a) for key, a in _hosted(records).items() if key in old_names}

        def switch() -> None:
            self.pool.set_division(state.model, state.variant, LIVE_DIVISION, sha)

        self._rollouts[entry] = Rollout(
            model=state.model,
            variant=state.variant,
            old_version=state.version,
            new_version=version,
            loads=loads,
            old_hosts=old_hosts,
            switch=switch,
            drain_s=self.config.drain_s,
            drain_timeout_s=self.config.drain_timeout_s,
        )
        self._pending[entry] = (sha, reason, observed, before, after, gain)
        self._advance(entry, self._rollouts[entry])

    def _advance(self, entry: str, rollout: Rollout) -> None:
        state = self.states[entry]
        was_loading = rollout.phase == RolloutPhase.LOADING
        rollout.advance(self._nodes, self._clock())
        state.rollout = rollout.progress()
        if was_loading and rollout.phase in (RolloutPhase.DRAINING, RolloutPhase.DONE):
            sha, reason, observed, before, after, gain = self._pending[entry]
            self._policies[entry].adopted(observed, self._clock())
            state.version = rollout.new_version
            state.division_sha = sha
            state.changed_unix_s = self._wall()
            state.reason = reason
            state.predicted_gain = gain
            state.predicted_before = before.describe()
            state.predicted_after = after.describe()
            state.basis = observed.describe()
            state.history = [
                *state.history,
                {"version": state.version, "unix_s": state.changed_unix_s, "reason": reason, "basis": state.basis,
                 "predicted_before_ms": before.mean_ms, "predicted_after_ms": after.mean_ms, "gain": gain,
                 "predicted_by_class": {c.device_class: [before.of(c.device_class), c.predicted_ms]
                                        for c in after.classes}},
            ][-HISTORY_LENGTH:]  # fmt: skip
        if rollout.phase == RolloutPhase.ROLLED_BACK:
            self._policies[entry].rejected(self._pending[entry][2])
            state.last_evaluation = f"rollout to v{rollout.new_version} rolled back: {rollout.error}"
        if rollout.finished:
            del self._rollouts[entry]
            del self._pending[entry]
