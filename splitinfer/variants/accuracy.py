"""Accuracy of a variant: measured on an evaluation set when one is given, declared otherwise, labelled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from splitinfer.program import CompiledProgram, Program

__all__ = ["Accuracy", "measure_top1"]


@dataclass(frozen=True, slots=True)
class Accuracy:
    """A figure in [0, 1] and where it comes from."""

    value: float
    measured: bool
    #: What it was measured on, or who declared it ("declared by the model author").
    source: str

    def __str__(self) -> str:
        how = "measured" if self.measured else "declared"
        return f"{self.value:.3f} ({how}: {self.source})"


def measure_top1(
    program: Program, inputs: Sequence[torch.Tensor], labels: torch.Tensor, source: str, batch_size: int | None = None
) -> Accuracy:
    """Top-1 accuracy of the program's first output on ``inputs`` (one sample per row of each input).

    The program's inputs have a fixed batch size; samples are fed in batches of that size (the last partial
    batch is padded and the padding ignored).
    """
    compiled = CompiledProgram(program)
    batch = batch_size or program.inputs[0].shape[0]
    total = labels.shape[0]
    correct = 0
    for start in range(0, total, batch):
        chunk = [x[start : start + batch] for x in inputs]
        real = chunk[0].shape[0]
        if real < batch:
            chunk = [torch.cat([c, c[-1:].expand(batch - real, *c.shape[1:])]) for c in chunk]
        feeds = dict(zip(program.input_names, chunk, strict=True))
        logits = compiled(feeds)[program.output_names[0]]
        correct += int((logits[:real].argmax(dim=-1) == labels[start : start + real]).sum())
    return Accuracy(correct / total, True, source)
