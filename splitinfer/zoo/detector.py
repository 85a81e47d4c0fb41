"""A small single-shot detector (SSD/RetinaNet-style), defined here, for 3 x 64 x 64 images and the three
classes of :mod:`splitinfer.detection.dataset`.

Backbone of four strided convolutions, a two-level feature pyramid (8 x 8 at stride 8, 4 x 4 at stride 16,
the coarse level upsampled into the fine one) and one head shared by both levels (the same weights read
twice, as RetinaNet's heads are), predicting per anchor a class score (background first) and four box
offsets. The network exports as a program; box decoding and NMS are its post-processing stage,
declared on the model (``model.postprocess``) and carried into the division manifest.
"""

from __future__ import annotations

import torch
from torch import nn

from splitinfer.detection.anchors import AnchorLevel
from splitinfer.detection.dataset import CLASSES, IMAGE_SIZE
from splitinfer.detection.postprocess import INPUTS, OUTPUTS, STAGE
from splitinfer.postprocess import PostprocessSpec

__all__ = ["LEVELS", "TinyDetector", "detector", "detector_postprocess"]

LEVELS = (AnchorLevel(8, IMAGE_SIZE // 8, (12.0, 18.0, 26.0)), AnchorLevel(16, IMAGE_SIZE // 16, (30.0, 40.0)))
_ANCHORS_PER_CELL = 3  # the head predicts this many per cell; a level with fewer sizes ignores the rest


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def detector_postprocess(score_threshold: float = 0.3, iou_threshold: float = 0.5) -> PostprocessSpec:
    """The detector's post-processing stage with its anchors, classes and thresholds."""
    return PostprocessSpec(
        stage=STAGE,
        inputs=INPUTS,
        outputs=OUTPUTS,
        params={
            "levels": [level.to_json() for level in LEVELS],
            "classes": list(CLASSES),
            "image_size": IMAGE_SIZE,
            "score_threshold": score_threshold,
            "iou_threshold": iou_threshold,
            "max_detections": 20,
        },
    )


class TinyDetector(nn.Module):
    """Image ``[B, 3, 64, 64]`` -> ``{"class_logits": [B, N, C+1], "box_deltas": [B, N, 4]}`` for the N
    anchors of :data:`LEVELS` (in :func:`splitinfer.detection.anchors` order)."""

    def __init__(self, classes: int = len(CLASSES), width: int = 32) -> None:
        super().__init__()
        self.classes = classes
        self.stem = nn.Sequential(_block(3, 16), _block(16, 32))  # 16 x 16
        self.c3 = _block(32, 64)  # 8 x 8, stride 8
        self.c4 = _block(64, 96)  # 4 x 4, stride 16
        self.lateral3 = nn.Conv2d(64, width, 1)
        self.lateral4 = nn.Conv2d(96, width, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(width, _ANCHORS_PER_CELL * (classes + 1), 3, padding=1)
        self.box = nn.Conv2d(width, _ANCHORS_PER_CELL * 4, 3, padding=1)
        self.postprocess = detector_postprocess()

    def _level(self, features: torch.Tensor, sizes: int) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.head(features)
        b, _, h, w = shared.shape
        cls = self.cls(shared).permute(0, 2, 3, 1).reshape(b, h, w, _ANCHORS_PER_CELL, self.classes + 1)
        box = self.box(shared).permute(0, 2, 3, 1).reshape(b, h, w, _ANCHORS_PER_CELL, 4)
        cls = cls[:, :, :, :sizes].reshape(b, h * w * sizes, self.classes + 1)
        box = box[:, :, :, :sizes].reshape(b, h * w * sizes, 4)
        return cls, box

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        c3 = self.c3(self.stem(image))
        c4 = self.c4(c3)
        p4 = self.lateral4(c4)
        p3 = self.lateral3(c3) + self.up(p4)
        cls3, box3 = self._level(p3, len(LEVELS[0].sizes))
        cls4, box4 = self._level(p4, len(LEVELS[1].sizes))
        return {"class_logits": torch.cat([cls3, cls4], dim=1), "box_deltas": torch.cat([box3, box4], dim=1)}


def detector() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The detector with random weights from a fixed seed (train it with
    :func:`splitinfer.detection.train_detector`); its post-processing stage is ``model.postprocess``."""
    torch.manual_seed(10)
    return TinyDetector().eval(), (torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE),)
