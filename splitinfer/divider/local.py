"""Running a division partition by partition in this process: the reference for every remote run."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splitinfer.divider.division import Division
from splitinfer.program import CompiledProgram

__all__ = ["LocalDivisionRunner"]


class LocalDivisionRunner:
    """Compiles each partition once; :meth:`run` feeds each the values it reads and collects model outputs."""

    def __init__(self, division: Division) -> None:
        self.division = division
        self._compiled = [(p, CompiledProgram(division.partition_program(p.name))) for p in division.partitions]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = dict(inputs)
        for spec, compiled in self._compiled:
            values.update(compiled({s.name: values[s.name] for s in spec.inputs}))
        return {name: values[name] for name in self.division.program.output_names}
