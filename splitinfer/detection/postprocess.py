"""The detector's post-processing stage: decode box offsets against the anchors, keep confident boxes, and
suppress overlapping ones per class (non-maximum suppression). Data-dependent (the number of boxes depends
on the image), so it runs outside the exported program, as the registered stage ``detection.decode_nms``.

A pure function of the network's two outputs (``class_logits [1, N, C+1]`` with class 0 the background,
``box_deltas [1, N, 4]``) and JSON parameters (anchor levels, class names, thresholds). Its outputs:
``boxes [K, 4]`` (float32 pixels, x_min, y_min, x_max, y_max), ``scores [K]`` (float32) and ``labels [K]``
(int64 class index into ``params["classes"]``), best first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from splitinfer.detection.anchors import anchors, decode_boxes, levels_from_params
from splitinfer.errors import InvalidArgument
from splitinfer.postprocess.stage import register

__all__ = ["OUTPUTS", "STAGE", "Box", "decode_nms", "detections_of", "nms"]

STAGE = "detection.decode_nms"
INPUTS = ("class_logits", "box_deltas")
OUTPUTS = ("boxes", "scores", "labels")


@dataclass(frozen=True, slots=True)
class Box:
    """One detection: a box in pixels, its class and score."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    label: str
    label_id: int
    score: float

    def __str__(self) -> str:
        corners = f"({self.x_min:.0f}, {self.y_min:.0f})-({self.x_max:.0f}, {self.y_max:.0f})"
        return f"{self.label} {self.score:.2f} at {corners}"


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a), len(b)]`` IoU of boxes (x_min, y_min, x_max, y_max)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indexes of the boxes kept by greedy per-class NMS, highest score first."""
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, labels = boxes[order], labels[order]
    iou = box_iou(boxes, boxes)
    same = labels[:, None] == labels[None, :]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= (iou[i] > iou_threshold) & same[i]
    return order[torch.tensor(keep, dtype=torch.int64)] if keep else order[:0]


def _float(params: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= float(value) <= high:
        raise InvalidArgument(f"post-processing parameter {key!r} must be a number in [{low}, {high}]")
    return float(value)


def decode_nms(
    class_logits: torch.Tensor, box_deltas: torch.Tensor, params: Mapping[str, Any]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image of the batch: ``(boxes, scores, labels)`` after decoding, thresholding and NMS."""
    levels = levels_from_params(params)
    priors = anchors(levels)
    classes = params.get("classes")
    if not isinstance(classes, list) or not classes:
        raise InvalidArgument("post-processing parameter 'classes' must be a non-empty list of names")
    if class_logits.dim() != 3 or class_logits.shape[1:] != (len(priors), len(classes) + 1):
        raise InvalidArgument(
            f"class_logits must be [B, {len(priors)}, {len(classes) + 1}], got {list(class_logits.shape)}"
        )
    if box_deltas.shape != (class_logits.shape[0], len(priors), 4):
        raise InvalidArgument(f"box_deltas must be [B, {len(priors)}, 4], got {list(box_deltas.shape)}")
    threshold = _float(params, "score_threshold", 0.3, 0.0, 1.0)
    iou_threshold = _float(params, "iou_threshold", 0.5, 0.0, 1.0)
    limit = int(_float(params, "max_detections", 50, 1, 1000))
    size = _float(params, "image_size", 64, 1, 1 << 16)
    results = []
    with torch.no_grad():
        probs = torch.softmax(class_logits.float(), dim=-1)[..., 1:]
        for b in range(class_logits.shape[0]):
            scores, labels = probs[b].max(dim=-1)
            keep = scores >= threshold
            boxes = decode_boxes(box_deltas[b].float()[keep], priors[keep]).clamp(0, size)
            scores, labels = scores[keep], labels[keep]
            kept = nms(boxes, scores, labels, iou_threshold)[:limit]
            results.append((boxes[kept].contiguous(), scores[kept].contiguous(), labels[kept].to(torch.int64)))
    return results


@register(STAGE)
def decode_nms_stage(outputs: Mapping[str, torch.Tensor], params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The registered stage: one image (batch 1) in, its detections out."""
    logits, deltas = outputs["class_logits"], outputs["box_deltas"]
    if logits.dim() != 3 or logits.shape[0] != 1:
        raise InvalidArgument(f"{STAGE} takes one image per request, got class_logits {list(logits.shape)}")
    boxes, scores, labels = decode_nms(logits, deltas, params)[0]
    return {"boxes": boxes, "scores": scores, "labels": labels}


def detections_of(outputs: Mapping[str, torch.Tensor], classes: Sequence[str]) -> list[Box]:
    """The stage's output tensors as boxes with class names."""
    boxes, scores, labels = outputs["boxes"], outputs["scores"], outputs["labels"]
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1] or labels.shape != boxes.shape[:1]:
        raise InvalidArgument("detections need boxes [K, 4], scores [K] and labels [K]")
    found = []
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        if not 0 <= int(label) < len(classes):
            raise InvalidArgument(f"detection label {label} is not a class index")
        x0, y0, x1, y1 = (float(v) for v in box)
        found.append(Box(x0, y0, x1, y1, classes[int(label)], int(label), float(score)))
    return found
