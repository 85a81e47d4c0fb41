"""Models defined in the project, for tests, demos and benchmarks (no downloads, deterministic weights).

Each factory returns ``(model, example_inputs)`` with weights drawn from a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ZOO", "build", "tiny_cnn"]  # and the other factories registered in ZOO

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


class _Residual(nn.Module):
    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        out = channels * stride
        self.conv1 = nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def residual_cnn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A ResNet-style CNN: stem, residual blocks with identity and projection shortcuts, classifier."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        _Residual(16),
        _Residual(16, stride=2),
        _Residual(32),
        _Residual(32, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    _randomise_norms(model)
    return model.eval(), (torch.randn(1, 3, 32, 32),)


class _Inception(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        branch = channels // 4
        self.b1 = nn.Conv2d(channels, branch, 1)
        self.b3 = nn.Sequential(nn.Conv2d(channels, branch, 1), nn.ReLU(), nn.Conv2d(branch, branch, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(channels, branch, 1), nn.ReLU(), nn.Conv2d(branch, branch, 5, padding=2))
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(channels, branch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], dim=1))


def inception_cnn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """An Inception-style CNN: multi-branch modules joined by concatenation."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        _Inception(32),
        nn.MaxPool2d(2),
        _Inception(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    return model.eval(), (torch.randn(1, 3, 32, 32),)


class _TwoHeads(nn.Module):
    """A shared backbone feeding a classification head and a dense (segmentation-like) head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()
        )
        self.classify = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        self.segment = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return self.classify(features), self.segment(features)


def two_heads() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(3)
    return _TwoHeads().eval(), (torch.randn(1, 3, 32, 32),)


def transformer() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A stack of ``nn.TransformerEncoderLayer`` over a sequence of 16 tokens of width 64."""
    torch.manual_seed(4)
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    return model.eval(), (torch.randn(1, 16, 64),)


class _TwoInTwoOut(nn.Module):
    """An image and a metadata vector in; a class score and an embedding out."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.meta = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.fuse = nn.Linear(32 + 16, 24)
        self.score = nn.Linear(24, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = torch.tanh(self.fuse(torch.cat([self.image(image), self.meta(meta)], dim=1)))
        return self.score(embedding), embedding


def two_in_two_out() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(5)
    return _TwoInTwoOut().eval(), (torch.randn(1, 3, 16, 16), torch.randn(1, 6))


ZOO: dict[str, Factory] = {
    "tiny_cnn": tiny_cnn,
    "residual_cnn": residual_cnn,
    "inception_cnn": inception_cnn,
    "two_heads": two_heads,
    "transformer": transformer,
    "two_in_two_out": two_in_two_out,
}


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    try:
        return ZOO[name]()
    except KeyError:
        raise KeyError(f"no model {name!r} in the zoo; known: {sorted(ZOO)}") from None
