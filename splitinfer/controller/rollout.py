"""Rolling a new division out to the nodes, live: load everything new, switch, drain, unload the old.

The protocol, for one model variant going from division version k to k+1:

1. **stage**: the new division is already a new version in the pool (its partitions carry the version in their
   names, ``v{k+1}-p0`` ..., so that old and new partitions can be hosted side by side);
2. **load**: every new partition is loaded on the nodes ``placement`` chose, before anything is unloaded; a
   node that refuses (or does not answer within its deadline) aborts the rollout, which **rolls back**: what
   was loaded for k+1 is unloaded and the pool keeps pointing at k;
3. **switch**: the pool's division name the planner reads ("default") points at k+1 in one atomic catalog
   write; every plan made from now on uses k+1, while plans already handed out still name k's partitions;
4. **drain**: k's partitions stay loaded for ``drain_s`` (longer than a plan lives) and until the nodes report
   nothing queued on them (or ``drain_timeout_s`` passed);
5. **unload**: k's partitions are unloaded from every node that hosts them.

Every step is driven by :meth:`Rollout.advance` with the current time, so the controller's loop never blocks
on a drain and tests run the whole protocol with a fake clock. Node access goes through :class:`NodeOps`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from splitinfer.errors import SplitInferError

__all__ = ["NodeOps", "Rollout", "RolloutPhase"]

log = logging.getLogger("splitinfer.controller")


class NodeOps(Protocol):
    """What a rollout does to server nodes (the daemon implements it over the nodes' gRPC API)."""

    def load(self, address: str, source: str, key: str) -> None:
        """Loads partition ``key`` ("model@variant/partition") from ``source`` (a pool:// URI); raises
        SplitInferError when the node refuses or cannot be reached."""
        ...

    def unload(self, address: str, key: str) -> None: ...

    def queued(self, address: str) -> Mapping[str, int]:
        """Requests waiting or running per hosted partition key on the node."""
        ...


class RolloutPhase:
    LOADING = "loading"
    DRAINING = "draining"
    DONE = "done"
    ROLLED_BACK = "rolled back"


@dataclass
class Rollout:
    """One model variant moving from ``old_version`` to ``new_version``."""

    model: str
    variant: str
    old_version: int
    new_version: int
    #: New partition key -> (pool:// source, addresses to load it on).
    loads: Mapping[str, tuple[str, Sequence[str]]]
    #: Old partition key -> addresses hosting it now.
    old_hosts: Mapping[str, Sequence[str]]
    #: Points the pool's division name at the new version (called once, after every load succeeded).
    switch: Callable[[], None]
    drain_s: float
    drain_timeout_s: float
    phase: str = RolloutPhase.LOADING
    loaded: list[tuple[str, str]] = field(default_factory=list)
    unloaded: list[tuple[str, str]] = field(default_factory=list)
    switched_at_s: float | None = None
    error: str = ""

    @property
    def total_loads(self) -> int:
        return sum(len(addresses) for _, addresses in self.loads.values())

    @property
    def finished(self) -> bool:
        return self.phase in (RolloutPhase.DONE, RolloutPhase.ROLLED_BACK)

    def progress(self) -> str:
        old_total = sum(len(a) for a in self.old_hosts.values())
        text = (
            f"v{self.old_version} -> v{self.new_version}: {self.phase}; loaded {len(self.loaded)}/{self.total_loads}, "
            f"unloaded {len(self.unloaded)}/{old_total}"
        )
        return f"{text}; {self.error}" if self.error else text

    def advance(self, nodes: NodeOps, now_s: float) -> str:
        """Runs the protocol as far as it can go now; returns the phase reached."""
        if self.phase == RolloutPhase.LOADING:
            self._load(nodes, now_s)
        if self.phase == RolloutPhase.DRAINING:
            self._drain(nodes, now_s)
        return self.phase

    def _load(self, nodes: NodeOps, now_s: float) -> None:
        for key, (source, addresses) in sorted(self.loads.items()):
            for address in addresses:
                if (key, address) in self.loaded:
                    continue
                try:
                    nodes.load(address, source, key)
                except SplitInferError as exc:
                    self.error = f"node {address} refused {key}: {exc}"[:500]
                    log.warning("rollout of %s@%s v%d failed, rolling back: %s", self.model, self.variant,
                                self.new_version, self.error)  # fmt: skip
                    self._roll_back(nodes)
                    return
                self.loaded.append((key, address))
        self.switch()
        self.switched_at_s = now_s
        self.phase = RolloutPhase.DRAINING
        log.info("%s@%s now on division v%d; draining v%d", self.model, self.variant, self.new_version,
                 self.old_version)  # fmt: skip

    def _roll_back(self, nodes: NodeOps) -> None:
        for key, address in reversed(self.loaded):
            try:
                nodes.unload(address, key)
            except SplitInferError as exc:  # the node may be the one that failed; nothing else to do
                log.warning("rollback could not unload %s from %s: %s", key, address, exc)
        self.phase = RolloutPhase.ROLLED_BACK

    def _drain(self, nodes: NodeOps, now_s: float) -> None:
        assert self.switched_at_s is not None
        waited = now_s - self.switched_at_s
        if waited < self.drain_s:
            return
        pending = {(key, address) for key, addresses in self.old_hosts.items() for address in addresses}
        pending -= set(self.unloaded)
        if waited < self.drain_s + self.drain_timeout_s:
            busy = set()
            for address in {a for _, a in pending}:
                try:
                    queued = nodes.queued(address)
                except SplitInferError:
                    continue  # a node that is gone holds nothing to drain
                busy |= {(k, address) for k, count in queued.items() if count > 0}
            if pending & busy:
                return
        for key, address in sorted(pending):
            try:
                nodes.unload(address, key)
            except SplitInferError as exc:
                log.warning("could not unload %s from %s: %s", key, address, exc)
            self.unloaded.append((key, address))
        self.phase = RolloutPhase.DONE
