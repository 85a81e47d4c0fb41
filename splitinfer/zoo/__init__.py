"""Models defined in the project, for tests, demos and benchmarks (no downloads, deterministic weights).

Each factory returns ``(model, example_inputs)`` with weights drawn from a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ZOO", "build", "tiny_cnn"]

Factory = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]


def tiny_cnn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A plain chain CNN for 3x32x32 images and 10 classes: feature extractor then classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    _randomise_norms(model)
    return model.eval(), (torch.randn(1, 3, 32, 32),)


def _randomise_norms(model: nn.Module) -> None:
    """Gives batch norms non-trivial statistics so that tests see them applied."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)


ZOO: dict[str, Factory] = {"tiny_cnn": tiny_cnn}


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    try:
        return ZOO[name]()
    except KeyError:
        raise KeyError(f"no model {name!r} in the zoo; known: {sorted(ZOO)}") from None
