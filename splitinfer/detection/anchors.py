"""Anchors of the detector's feature levels, and box <-> offset encoding (SSD style, with variances)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from splitinfer.errors import InvalidArgument

__all__ = ["AnchorLevel", "anchors", "decode_boxes", "encode_boxes", "levels_from_params"]

#: Offsets are divided by these (centre, size) before the network predicts them.
VARIANCES = (0.1, 0.2)


@dataclass(frozen=True, slots=True)
class AnchorLevel:
    """A feature map of ``cells`` x ``cells`` at ``stride`` pixels, with square anchors of ``sizes`` pixels."""

    stride: int
    cells: int
    sizes: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"stride": self.stride, "cells": self.cells, "sizes": list(self.sizes)}


def levels_from_params(params: Mapping[str, Any]) -> list[AnchorLevel]:
    """The levels a post-processing stage's parameters describe; InvalidArgument when malformed."""
    try:
        levels = [
            AnchorLevel(int(level["stride"]), int(level["cells"]), tuple(float(s) for s in level["sizes"]))
            for level in params["levels"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"malformed anchor levels: {exc!r}") from None
    if not levels or any(lv.stride <= 0 or not 0 < lv.cells <= 512 or not lv.sizes for lv in levels):
        raise InvalidArgument("anchor levels need a positive stride, 1..512 cells and at least one size")
    if sum(lv.cells * lv.cells * len(lv.sizes) for lv in levels) > 200_000:
        raise InvalidArgument("too many anchors")
    return levels


def anchors(levels: Sequence[AnchorLevel]) -> torch.Tensor:
    """``[N, 4]`` anchors ``(cx, cy, w, h)`` in pixels, in the order the detector's heads emit them:
    level by level, cell rows then columns, then sizes."""
    out = []
    for level in levels:
        centres = (torch.arange(level.cells, dtype=torch.float32) + 0.5) * level.stride
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        for_cells = []
        for size in level.sizes:
            s = torch.full_like(cx, size)
            for_cells.append(torch.stack([cx, cy, s, s], dim=-1))
        out.append(torch.stack(for_cells, dim=2).reshape(-1, 4))
    return torch.cat(out)


def encode_boxes(boxes: torch.Tensor, anchor_boxes: torch.Tensor) -> torch.Tensor:
    """Offsets that turn ``anchor_boxes`` (cx, cy, w, h) into ``boxes`` (x_min, y_min, x_max, y_max)."""
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return torch.stack(
        [
            (cx - anchor_boxes[:, 0]) / anchor_boxes[:, 2] / VARIANCES[0],
            (cy - anchor_boxes[:, 1]) / anchor_boxes[:, 3] / VARIANCES[0],
            torch.log(w / anchor_boxes[:, 2]) / VARIANCES[1],
            torch.log(h / anchor_boxes[:, 3]) / VARIANCES[1],
        ],
        dim=1,
    )


def decode_boxes(offsets: torch.Tensor, anchor_boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (x_min, y_min, x_max, y_max) from offsets against anchors; the inverse of :func:`encode_boxes`."""
    cx = anchor_boxes[:, 0] + offsets[:, 0] * VARIANCES[0] * anchor_boxes[:, 2]
    cy = anchor_boxes[:, 1] + offsets[:, 1] * VARIANCES[0] * anchor_boxes[:, 3]
    w = anchor_boxes[:, 2] * torch.exp(offsets[:, 2].clamp(max=8.0) * VARIANCES[1])
    h = anchor_boxes[:, 3] * torch.exp(offsets[:, 3].clamp(max=8.0) * VARIANCES[1])
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
