"""A loaded partition: a compiled program plus the checks that guard it from bad requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from splitinfer.errors import InvalidArgument
from splitinfer.program import CompiledProgram, Program, ValueSpec

__all__ = ["LoadedPartition", "PartitionKey"]


@dataclass(frozen=True, slots=True, order=True)
class PartitionKey:
    """Model, variant and partition name: the identity of a partition."""

    model: str
    variant: str
    partition: str

    def __str__(self) -> str:
        return f"{self.model}@{self.variant}/{self.partition}"


class LoadedPartition:
    """A partition ready to run, with its usage statistics.

    :meth:`run` checks that the inputs are exactly the partition's inputs with the right dtypes and shapes,
    and raises InvalidArgument naming what was expected otherwise.
    """

    def __init__(self, key: PartitionKey, program: Program, *, ewma_alpha: float = 0.2) -> None:
        self.key = key
        self.program = program
        self._compiled = CompiledProgram(program)
        self._alpha = ewma_alpha
        self._lock = threading.Lock()
        self.completed = 0
        self.mean_compute_ms = 0.0

    @property
    def inputs(self) -> tuple[ValueSpec, ...]:
        return self.program.inputs

    @property
    def outputs(self) -> tuple[ValueSpec, ...]:
        return self.program.outputs

    def check_inputs(self, feeds: Mapping[str, torch.Tensor]) -> None:
        expected = {s.name: s for s in self.program.inputs}
        if set(feeds) != set(expected):
            missing, extra = sorted(set(expected) - set(feeds)), sorted(set(feeds) - set(expected))
            raise InvalidArgument(
                f"partition {self.key} takes inputs {sorted(expected)}; missing {missing}, unexpected {extra}"
            )
        for name, spec in expected.items():
            tensor = feeds[name]
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise InvalidArgument(
                    f"partition {self.key} input {name!r} must be {spec}, "
                    f"got {str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"
                )

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checks the inputs, runs the partition, records its compute time."""
        self.check_inputs(feeds)
        start = time.perf_counter()
        outputs = self._compiled(feeds)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        with self._lock:
            self.completed += 1
            self.mean_compute_ms = (
                elapsed_ms
                if self.completed == 1
                else (1 - self._alpha) * self.mean_compute_ms + self._alpha * elapsed_ms
            )
        return outputs
