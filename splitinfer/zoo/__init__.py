"""Models defined in the project, for tests, demos and benchmarks (no downloads, deterministic weights).

Each factory returns ``(model, example_inputs)`` with weights drawn from a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BENCHMARK_MODELS", "DETECTION_MODELS", "SHARED_BACKBONE_MODELS", "TASKS", "ZOO", "build"]

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


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module = (
            nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or inplanes != out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.downsample(x))


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = (
            nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
            if stride != 1 or inplanes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.downsample(x))


def _resnet(
    block: type[_Basic] | type[_Bottleneck], layers: list[int], resolution: int, classes: int = 1000
) -> nn.Module:
    """The ResNet architecture of He et al. (torchvision's layout), without torchvision."""
    modules: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    inplanes = 64
    for i, count in enumerate(layers):
        planes = 64 * 2**i
        for j in range(count):
            modules.append(block(inplanes, planes, stride=2 if (j == 0 and i > 0) else 1))
            inplanes = planes * block.expansion
    modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, classes)]
    model = nn.Sequential(*modules)
    _randomise_norms(model)
    return model.eval()


def resnet18(resolution: int = 224) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """ResNet-18-shaped (11.7 M parameters, about 1.8 G multiply-adds at 224x224)."""
    torch.manual_seed(6)
    return _resnet(_Basic, [2, 2, 2, 2], resolution), (torch.randn(1, 3, resolution, resolution),)


def resnet50(resolution: int = 224) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """ResNet-50-shaped (25.6 M parameters, about 4.1 G multiply-adds at 224x224; 175 operations exported)."""
    torch.manual_seed(7)
    return _resnet(_Bottleneck, [3, 4, 6, 3], resolution), (torch.randn(1, 3, resolution, resolution),)


def bert_like() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A transformer encoder of similar graph size to ResNet-50: 6 layers, width 256, 64 tokens."""
    torch.manual_seed(8)
    layer = nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)
    return model.eval(), (torch.randn(1, 64, 256),)


def _shared_backbone() -> nn.Module:
    torch.manual_seed(9)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()
    )


class _TaskModel(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.backbone = _shared_backbone()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def shared_classifier() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Classification on the shared feature extractor (same weights as ``shared_segmenter``'s backbone)."""
    model = _TaskModel(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)))
    return model.eval(), (torch.randn(1, 3, 32, 32),)


def shared_segmenter() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Dense prediction on the shared feature extractor (same weights as ``shared_classifier``'s backbone)."""
    model = _TaskModel(nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)))
    return model.eval(), (torch.randn(1, 3, 32, 32),)


ZOO: dict[str, Factory] = {
    "tiny_cnn": tiny_cnn,
    "residual_cnn": residual_cnn,
    "inception_cnn": inception_cnn,
    "two_heads": two_heads,
    "transformer": transformer,
    "two_in_two_out": two_in_two_out,
}

#: Larger models for benchmarks; not in ZOO so that the test matrix stays fast.
BENCHMARK_MODELS: dict[str, Factory] = {"resnet18": resnet18, "resnet50": resnet50, "bert_like": bert_like}

#: Task models that share one feature extractor (identical weights), for cross-model fan-out.
SHARED_BACKBONE_MODELS: dict[str, Factory] = {
    "shared_classifier": shared_classifier,
    "shared_segmenter": shared_segmenter,
}


def detector() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The small single-shot detector of :mod:`splitinfer.zoo.detector` (post-processing stage declared)."""
    from splitinfer.zoo.detector import detector as build_detector

    return build_detector()


#: Detectors: their network divides like any model; decoding and NMS are a declared post-processing stage.
DETECTION_MODELS: dict[str, Factory] = {"detector": detector}

#: Models that solve the same task (3x32x32 images, 10 classes): a small and a large choice.
TASKS: dict[str, tuple[str, ...]] = {"image-classification-32": ("tiny_cnn", "residual_cnn")}


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    factories = {**ZOO, **BENCHMARK_MODELS, **SHARED_BACKBONE_MODELS, **DETECTION_MODELS}
    try:
        return factories[name]()
    except KeyError:
        raise KeyError(f"no model {name!r} in the zoo; known: {sorted(factories)}") from None
