"""Planning for the front-end: the model's variants from the pool, servers from the registry, one Planner."""

from __future__ import annotations

import dataclasses
from typing import Any

from splitinfer.errors import InvalidArgument, NotFound
from splitinfer.planner.build import problem_from
from splitinfer.planner.plan import Plan
from splitinfer.planner.planner import Planner
from splitinfer.planner.problem import CodecProfile
from splitinfer.planner.profiles import DEFAULT_CODECS
from splitinfer.pool import ModelPool
from splitinfer.registry import Registry
from splitinfer.results.keys import shown
from splitinfer.v1 import plan_pb2

__all__ = ["PlanningService"]


def accepted_codecs(offered: tuple[CodecProfile, ...], device: plan_pb2.DeviceState) -> tuple[CodecProfile, ...]:
    """The codecs a plan for ``device`` may use: those made of a lossy and a lossless step it accepts (all,
    for a list left empty). Every crossing is held to it, server-to-server ones too (conservative: the
    planner has one codec menu per request)."""
    lossy, lossless = set(device.accepted_lossy), set(device.accepted_lossless)
    kept = tuple(
        c for c in offered
        if (not lossy or c.codec.lossy in lossy) and (not lossless or c.codec.lossless in lossless)
    )  # fmt: skip
    if not kept:
        raise InvalidArgument(
            "the device accepts none of the codecs plans are made with: "
            f"{', '.join(str(c.codec) for c in offered)}; accept at least LOSSY_CODEC_NONE and LOSSLESS_CODEC_NONE"
        )
    return kept


class PlanningService:
    """Plans requests for a model: every variant of it (and of other models of its task) in the pool."""

    def __init__(
        self,
        pool: ModelPool,
        registry: Registry,
        planner: Planner | None = None,
        division: str = "default",
        codecs: tuple[CodecProfile, ...] = DEFAULT_CODECS,
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.planner = planner or Planner()
        self.division = division
        self.codecs = codecs

    def manifests(self, model: str, variant: str = "", *, exact: bool = False) -> list[dict[str, Any]]:
        """Division manifests to plan ``model`` with: every alternative for its task, or with ``exact`` only
        the model itself (and only ``variant`` when one is named)."""
        entries = [e for e in self.pool.variants(model) if e.model == model]
        if not entries:
            raise NotFound(f"model {shown(model)} is not in the pool")
        if variant:
            entries = [e for e in entries if e.variant == variant]
            if not entries:
                raise NotFound(f"model {shown(model)} has no variant {shown(variant)}")
        task = entries[0].task
        if task and not exact:
            entries = self.pool.alternatives(task)
        manifests = [self.pool.manifest(e.divisions[self.division]) for e in entries if self.division in e.divisions]
        if not manifests:
            raise NotFound(f"model {shown(model)} has no division named {self.division!r}")
        return manifests

    def partition_flops(self, model: str, variant: str) -> dict[str, float]:
        """FLOPs of each partition of a variant's division (one manifest read)."""
        manifest = self.pool.manifest(self.pool.resolve(model, variant, self.division))
        return {entry["name"]: float(entry["flops"]) for entry in manifest["partitions"]}

    def plan(
        self,
        model: str,
        device: plan_pb2.DeviceState,
        wanted: plan_pb2.Requirements,
        *,
        variant: str = "",
        exact: bool = False,
    ) -> Plan:
        manifests = self.manifests(model, variant, exact=exact)
        codecs = accepted_codecs(self.codecs, device)
        problem = problem_from(manifests, self.registry.servers().values(), device, wanted, codecs)
        plan = self.planner.plan(problem, registry_version=self.registry.version, device_id=device.device_id)
        # Which division the plan's partitions belong to (the cache keys plans on their partitions, so this
        # is the manifest the plan was made from even when it comes from the cache).
        sha = self.pool.resolve(plan.model, plan.variant, self.division)
        return dataclasses.replace(plan, division_sha256=sha)
