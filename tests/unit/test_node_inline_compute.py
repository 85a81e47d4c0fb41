"""Tiny partitions run on the event loop when nothing is queued (no thread hand-off); anything else, or any
partition under an emulated slowdown, still goes to a compute thread."""

from __future__ import annotations

import pytest
import torch

from server_node.compute import ComputePool
from server_node.executor import INLINE_MIN_RUNS, _tiny
from splitinfer.errors import DeadlineExceeded
from splitinfer.program import export_program
from splitinfer.runtime import LoadedPartition, PartitionKey
from splitinfer.transport.deadline import Deadline


class _Copy(torch.nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()


class _Hook:
    def after_run(self, partition: LoadedPartition, elapsed_s: float) -> None:
        pass

    def reported_flops(self, measured: float) -> float:
        return measured


@pytest.fixture
def partition() -> LoadedPartition:
    x = torch.ones(4)
    return LoadedPartition(PartitionKey("copy", "fp32", "p"), export_program(_Copy(), (x,)))


def test_a_partition_is_tiny_only_once_measured_fast(partition: LoadedPartition) -> None:
    name = partition.inputs[0].name
    assert not _tiny(partition)  # never run: unknown
    for _ in range(INLINE_MIN_RUNS):
        partition.run({name: torch.ones(4)})
    assert _tiny(partition)
    partition.mean_compute_ms = 50.0
    assert not _tiny(partition)


def test_run_here_runs_on_the_calling_thread_only_when_nothing_is_queued(partition: LoadedPartition) -> None:
    pool = ComputePool(1)
    name = partition.inputs[0].name
    try:
        ran = pool.run_here(partition, {name: torch.arange(4.0)}, Deadline.after(5))
        assert ran is not None
        outputs, timing = ran
        assert torch.equal(next(iter(outputs.values())), torch.arange(4.0)) and timing.queue_ms >= 0
        pool._count("other", 1)  # a run waiting for the thread: the inline path must not jump the queue
        assert pool.run_here(partition, {name: torch.ones(4)}, Deadline.after(5)) is None
        pool._count("other", -1)
        with pytest.raises(DeadlineExceeded):
            pool.run_here(partition, {name: torch.ones(4)}, Deadline.after(-1))
    finally:
        pool.close()


def test_run_here_declines_under_an_emulated_slowdown(partition: LoadedPartition) -> None:
    pool = ComputePool(1, _Hook())
    try:
        assert pool.run_here(partition, {partition.inputs[0].name: torch.ones(4)}, Deadline.after(5)) is None
    finally:
        pool.close()
