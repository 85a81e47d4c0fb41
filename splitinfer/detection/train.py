"""Training the zoo's detector on the synthetic set: SSD matching and loss, in seconds on a CPU."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from splitinfer.detection.anchors import anchors, encode_boxes
from splitinfer.detection.dataset import DetectionSet, synthetic_detection_set
from splitinfer.detection.postprocess import box_iou

__all__ = ["TrainReport", "match_anchors", "train_detector"]


@dataclass(frozen=True, slots=True)
class TrainReport:
    steps: int
    seconds: float
    final_loss: float


def _xyxy(priors: torch.Tensor) -> torch.Tensor:
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def match_anchors(
    priors: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, positive_iou: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: its class target (0 background, else label + 1) and box offsets (SSD matching: IoU at
    least ``positive_iou``, and each object's best anchor whatever its IoU)."""
    target_cls = torch.zeros(len(priors), dtype=torch.int64)
    target_box = torch.zeros(len(priors), 4)
    if len(boxes) == 0:
        return target_cls, target_box
    iou = box_iou(_xyxy(priors), boxes)
    best_iou, best_obj = iou.max(dim=1)
    best_obj[iou.argmax(dim=0)] = torch.arange(len(boxes))
    best_iou[iou.argmax(dim=0)] = 1.0
    positive = best_iou >= positive_iou
    target_cls[positive] = labels[best_obj[positive]] + 1
    target_box[positive] = encode_boxes(boxes[best_obj[positive]], priors[positive])
    return target_cls, target_box


def train_detector(
    model: nn.Module, data: DetectionSet | None = None, *, steps: int = 300, batch_size: int = 32, seed: int = 0
) -> TrainReport:
    """Trains ``model`` (a :class:`~splitinfer.zoo.detector.TinyDetector`) in place and leaves it in eval
    mode. Classification: cross-entropy with hard negative mining (3 negatives per positive); boxes:
    smooth L1 on positives."""
    from splitinfer.zoo.detector import LEVELS

    torch.manual_seed(seed)
    data = data if data is not None else synthetic_detection_set(768, seed=1000 + seed)
    priors = anchors(LEVELS)
    targets = [match_anchors(priors, b, lab) for b, lab in zip(data.boxes, data.labels, strict=True)]
    width = data.images.shape[-1]
    mirrored = [match_anchors(priors, _mirror(b, width), lab) for b, lab in zip(data.boxes, data.labels, strict=True)]
    # Targets of each image and of its mirror image (horizontal flips: boxes mirror, classes stay).
    all_cls = torch.stack([torch.stack([t[0] for t in targets]), torch.stack([t[0] for t in mirrored])])
    all_box = torch.stack([torch.stack([t[1] for t in targets]), torch.stack([t[1] for t in mirrored])])
    optimiser = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=4e-3, total_steps=steps, pct_start=0.15)
    model.train()
    start = time.perf_counter()
    loss_value = float("nan")
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        flip = (torch.rand(batch_size, generator=gen) < 0.5).long()
        images = data.images[idx]
        out = model(torch.where(flip.bool()[:, None, None, None], images.flip(-1), images))
        cls_t, box_t = all_cls[flip, idx], all_box[flip, idx]
        logits, deltas = out["class_logits"], out["box_deltas"]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), cls_t.reshape(-1), reduction="none").reshape(
            cls_t.shape
        )
        positive = cls_t > 0
        num_pos = positive.sum(dim=1, keepdim=True).clamp(min=1)
        negative_loss = ce.masked_fill(positive, 0.0)
        rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
        hard_negative = rank < 3 * num_pos
        cls_loss = (ce * (positive | hard_negative)).sum() / num_pos.sum()
        box_loss = F.smooth_l1_loss(deltas[positive], box_t[positive], reduction="sum") / num_pos.sum()
        loss = cls_loss + box_loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        loss_value = float(loss.detach())
    model.eval()
    return TrainReport(steps, time.perf_counter() - start, loss_value)


def _mirror(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
