"""COCO-style mean average precision through pycocotools (the reference implementation of COCO's metric)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["MeanAP", "mean_average_precision"]


@dataclass(frozen=True, slots=True)
class MeanAP:
    """mAP averaged over IoU 0.50:0.95 (COCO's headline figure) and at IoU 0.50, over ``images`` images."""

    map: float
    map_50: float
    images: int

    def __str__(self) -> str:
        return f"mAP {self.map:.3f} (IoU .50:.95), mAP@.5 {self.map_50:.3f} on {self.images} images"


def mean_average_precision(
    predictions: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    truth_boxes: Sequence[torch.Tensor],
    truth_labels: Sequence[torch.Tensor],
    classes: Sequence[str],
) -> MeanAP:
    """mAP of ``predictions`` (per image: boxes [K, 4] x_min, y_min, x_max, y_max; scores; labels) against the
    ground truth, computed by pycocotools' COCOeval."""
    from pycocotools.coco import COCO  # type: ignore[import-untyped]
    from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]

    if not len(predictions) == len(truth_boxes) == len(truth_labels):
        raise ValueError("one prediction per image is needed")
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    results: list[dict[str, object]] = []
    for image_id, (boxes, labels) in enumerate(zip(truth_boxes, truth_labels, strict=True), start=1):
        images.append({"id": image_id})
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                 "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    for image_id, (boxes, scores, labels) in enumerate(predictions, start=1):
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            results.append(
                {"image_id": image_id, "category_id": int(label) + 1, "score": float(score),
                 "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
            )  # fmt: skip
    if not results:
        return MeanAP(0.0, 0.0, len(images))
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress and a table
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)],
        }
        truth.createIndex()
        found = truth.loadRes(results)
        evaluation = COCOeval(truth, found, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return MeanAP(float(max(evaluation.stats[0], 0.0)), float(max(evaluation.stats[1], 0.0)), len(images))
