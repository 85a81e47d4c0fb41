"""How far a variant's outputs drift from the reference variant's on the same inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["Drift", "output_drift"]


@dataclass(frozen=True, slots=True)
class Drift:
    """The worst output: largest absolute difference, and that relative to the reference's largest value."""

    max_abs: float
    relative: float
    #: The output with the largest relative drift ("" when the outputs are identical).
    output: str

    def __str__(self) -> str:
        if not self.output:
            return "none (identical outputs)"
        return f"max |diff| {self.max_abs:.3g} ({self.relative:.2%} of the largest value) in {self.output}"


def output_drift(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> Drift:
    """The drift of ``other`` from ``reference``, output by output (same names; floats compared as float32,
    other dtypes by the share of elements that differ)."""
    worst = Drift(0.0, 0.0, "")
    missing = sorted(set(reference) - set(other))
    if missing:
        raise KeyError(f"outputs {missing} are missing")
    for name, ref in reference.items():
        out = other[name]
        if ref.shape != out.shape:
            raise ValueError(f"output {name!r}: shape {list(out.shape)} differs from {list(ref.shape)}")
        if ref.numel() == 0:
            continue
        if ref.is_floating_point():
            diff = (out.float() - ref.float()).abs()
            max_abs = float(diff.max())
            relative = max_abs / max(float(ref.float().abs().max()), 1e-12)
        else:
            max_abs = float((out != ref).float().mean())
            relative = max_abs
        if relative > worst.relative or (not worst.output and max_abs > 0):
            worst = Drift(max_abs, relative, name)
    return worst
