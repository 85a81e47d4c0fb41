"""A synthetic detection set generated in code: coloured shapes on textured backgrounds, fixed seeds.

Each image (3 x 64 x 64, values roughly in [-1, 1]) holds one to three objects of three classes (square,
circle, triangle), 12 to 34 pixels across, overlapping little, on a background of low-frequency noise,
stripes of random orientation and pixel noise. Boxes are tight, in pixels, ``(x_min, y_min, x_max, y_max)``.
The same seed always gives the same set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["CLASSES", "IMAGE_SIZE", "DetectionSet", "synthetic_detection_set"]

CLASSES = ("square", "circle", "triangle")
IMAGE_SIZE = 64


@dataclass(frozen=True)
class DetectionSet:
    """Images ``[N, 3, H, W]`` and, per image, boxes ``[K, 4]`` (float32, pixels) and labels ``[K]`` (int64)."""

    images: torch.Tensor
    boxes: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _background(gen: torch.Generator, size: int) -> torch.Tensor:
    coarse = torch.rand(3, 6, 6, generator=gen)
    image = F.interpolate(coarse[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    angle = float(torch.rand((), generator=gen)) * math.pi
    freq = 0.15 + 0.35 * float(torch.rand((), generator=gen))
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    stripes = torch.sin((xs * math.cos(angle) + ys * math.sin(angle)) * freq)
    image = 0.55 * image + 0.15 * stripes[None] + 0.08 * torch.randn(3, size, size, generator=gen)
    return image


def _mask(kind: int, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    x0, y0, x1, y1 = box
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32) + 0.5, torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij"
    )
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    if kind == 0:
        return inside
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if kind == 1:
        return ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1.0
    # An upright triangle: apex at the top centre, base along the bottom.
    t = (ys - y0) / max(h, 1e-6)
    return inside & ((xs - cx).abs() <= t * w / 2)


def synthetic_detection_set(count: int, seed: int = 0, size: int = IMAGE_SIZE, max_objects: int = 3) -> DetectionSet:
    """``count`` images with their boxes and labels, generated from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    images, all_boxes, all_labels = [], [], []
    for _ in range(count):
        image = _background(gen, size)
        wanted = 1 + int(torch.randint(max_objects, (), generator=gen))
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        for _attempt in range(20):
            if len(boxes) == wanted:
                break
            side = 12 + int(torch.randint(23, (), generator=gen))
            aspect = 0.8 + 0.4 * float(torch.rand((), generator=gen))
            w, h = float(side), float(max(10, min(size - 2, round(side * aspect))))
            x0 = float(torch.randint(1, size - int(w) - 1, (), generator=gen))
            y0 = float(torch.randint(1, size - int(h) - 1, (), generator=gen))
            box = (x0, y0, x0 + w, y0 + h)
            if any(_iou(box, other) > 0.15 for other in boxes):
                continue
            kind = int(torch.randint(len(CLASSES), (), generator=gen))
            mask = _mask(kind, box, size)
            colour = torch.rand(3, generator=gen) * 2 - 1
            colour = colour + 0.6 * torch.sign(colour)  # far from the background's grey
            image = torch.where(mask[None], colour[:, None, None].expand(3, size, size), image)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            boxes.append((float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1))
            labels.append(kind)
        images.append(image)
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    return DetectionSet(torch.stack(images), tuple(all_boxes), tuple(all_labels))
