"""A small live system for client tests: a pool, two in-process server nodes, an embedded registry and a
front-end on real ports. The model is the zoo's residual CNN divided at its narrow cuts, in fp32 and fp16."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from server_node.config import NodeConfig
from server_node.server import RunningNode, start_node
from splitinfer.divider import partition_at
from splitinfer.frontend.server import FrontEndConfig, RunningFrontEnd, start_frontend
from splitinfer.graph import ModelGraph, narrow_cuts
from splitinfer.pool import ModelPool
from splitinfer.registry import EmbeddedRegistry
from splitinfer.runtime import PartitionKey
from splitinfer.transport.clients import NodeClient
from splitinfer.variants import make_variant
from splitinfer.zoo import build

MODEL = "residual_cnn"


@dataclass
class SmallSystem:
    frontend: RunningFrontEnd
    nodes: list[RunningNode]
    registry: EmbeddedRegistry
    pool: ModelPool
    model: torch.nn.Module
    example: torch.Tensor
    input_name: str
    output_name: str


@contextmanager
def small_system(root: Path, *, variants: tuple[str, ...] = ("fp32", "fp16")) -> Iterator[SmallSystem]:
    model, example = build(MODEL)
    pool = ModelPool(root / "pool")
    input_name = output_name = ""
    for kind in variants:
        program = make_variant(model, example, kind)
        input_name, output_name = program.input_names[0], program.output_names[0]
        graph = ModelGraph.build(program, example)
        cuts = [c.position for c in narrow_cuts(graph)][1:-1]
        division = partition_at(graph, MODEL, cuts[:: max(1, len(cuts) // 2)])
        pool.add_division(division, variant=kind, division_name="default", task="residual", accuracy=0.9)
    registry = EmbeddedRegistry()
    nodes = [
        start_node(NodeConfig(torch_threads=1, benchmark_s=0.05, status_interval_s=0.2), registry=registry)
        for _ in range(2)
    ]
    frontend = None
    try:
        for entry in pool.variants():
            sha = entry.divisions["default"]
            for part in pool.manifest(sha)["partitions"]:
                target = root / "exports" / entry.variant / part["name"]
                part_sha = pool.export_partition(sha, part["name"], target)
                for node in nodes:
                    with NodeClient(node.address) as client:
                        client.load_partition(str(target), PartitionKey(MODEL, entry.variant, part["name"]), part_sha)
        for node in nodes:
            node.publish()
        deadline = time.monotonic() + 10
        while len(registry.servers()) < len(nodes):
            assert time.monotonic() < deadline, "nodes did not join the registry"
            time.sleep(0.05)
        frontend = start_frontend(
            FrontEndConfig(pool_dir=str(pool.root), results_db=str(root / "results.db"), http_port=0),
            registry=registry,
        )
        yield SmallSystem(frontend, nodes, registry, pool, model, example[0], input_name, output_name)
    finally:
        if frontend is not None:
            frontend.stop(0.5)
        for node in nodes:
            node.stop(0.5)
