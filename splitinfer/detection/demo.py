"""The detection phase of ``make demo``: the zoo's detector, trained once on the synthetic set, divided
into the pool with its decode + NMS stage declared; a device sends frames, the front-end runs the stage
after the chain and stores the boxes; the phase prints the boxes found, queries them back from the Result
Store by label and score, and draws one frame with its boxes (PNG)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import safetensors.torch
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from splitinfer.detection.dataset import CLASSES, DetectionSet, synthetic_detection_set
from splitinfer.detection.postprocess import Box, detections_of
from splitinfer.detection.train import train_detector
from splitinfer.divider import ServerCapacity, divide
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.v1 import result_store_pb2, result_store_pb2_grpc
from splitinfer.variants import make_variant
from splitinfer.zoo.detector import TinyDetector, detector

__all__ = ["DETECTOR", "detection_phase", "draw_detections", "prepare_detector"]

DETECTOR = "detector"
TRAIN_STEPS = 300


def _trained(cache: Path, console: Console) -> TinyDetector:
    model, _ = detector()
    assert isinstance(model, TinyDetector)
    weights = cache / f"detector-{TRAIN_STEPS}.safetensors"
    if weights.is_file():
        model.load_state_dict(safetensors.torch.load_file(str(weights)))
        return model.eval()
    start = time.perf_counter()
    report = train_detector(model, synthetic_detection_set(768, seed=1000), steps=TRAIN_STEPS)
    cache.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    console.print(f"trained the detector on 768 synthetic images in {time.perf_counter() - start:.0f} s "
                  f"(loss {report.final_loss:.2f}; cached in {weights})")  # fmt: skip
    return model.eval()


def prepare_detector(pool: ModelPool, cache: Path, console: Console) -> tuple[TinyDetector, DetectionSet]:
    """Trains (once) and divides the detector into ``pool`` as fp32 and int8, each over two servers with the
    post-processing stage declared; returns it and the frames the phase sends."""
    model = _trained(cache, console)
    frames = synthetic_detection_set(6, seed=2024)
    example = (frames.images[:1],)
    servers = [ServerCapacity("edge", 1e10, 1 << 30), ServerCapacity("cloud", 4e10, 1 << 30)]
    for kind in ("fp32", "int8"):
        program = make_variant(model, example, kind)
        division = divide(ModelGraph.build(program, example), DETECTOR, servers)
        pool.add_division(
            replace(division, postprocess=model.postprocess), variant=kind, division_name="default",
            task="detection", accuracy=0.6, accuracy_measured=False,
        )  # fmt: skip
    console.print(f"divided the detector (fp32, int8; decode + NMS as its post-processing stage) into {pool.root}")
    return model, frames


def draw_detections(image: torch.Tensor, boxes: list[Box], truth: torch.Tensor, path: Path) -> Path:
    """A PNG of ``image`` (3 x H x W) with the boxes found (labelled) and the drawn objects (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    shown = ((image.permute(1, 2, 0) + 1.5) / 3).clamp(0, 1).numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ax.imshow(shown, interpolation="nearest")
    for x0, y0, x1, y1 in truth.tolist():
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--", lw=1))
    for box in boxes:
        ax.add_patch(Rectangle((box.x_min, box.y_min), box.x_max - box.x_min, box.y_max - box.y_min,
                               fill=False, edgecolor="yellow", lw=2))  # fmt: skip
        ax.text(box.x_min, box.y_min - 1, f"{box.label} {box.score:.2f}", color="yellow", fontsize=7,
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1})  # fmt: skip
    ax.set_axis_off()
    ax.set_title("boxes found (yellow) and objects drawn (dashed)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def detection_phase(agent: Any, frontend: str, frames: DetectionSet, work: Path, console: Console) -> bool:
    """Sends the frames through ``agent`` (an EdgeAgent), prints what was found and stored; True when boxes
    were found and the Result Store returns them by label and score."""
    console.rule("[bold]detection: a camera sends frames; decode + NMS run where the plan ends")
    table = Table(title="boxes found per frame")
    for column in ("frame", "objects drawn", "boxes found", "plan"):
        table.add_column(column)
    found_any: list[Box] = []
    #: Boxes of frames whose plan ended on the servers: decode + NMS ran on the front-end, which stored them.
    found_by_servers = 0
    first: tuple[int, list[Box]] | None = None
    for i in range(len(frames)):
        result = agent.infer(DETECTOR, {"image": frames.images[i : i + 1]}, request_id=f"frame-{i}-{time.time_ns()}")
        boxes = detections_of(result.outputs, CLASSES)
        found_any += boxes
        plan = result.plan
        if plan is not None and not result.device_only_fallback and not plan.placements[-1].on_device:
            found_by_servers += len(boxes)
        if first is None or len(boxes) > len(first[1]):
            first = (i, boxes)  # the frame with the most boxes is the one drawn
        drawn = ", ".join(CLASSES[int(label)] for label in frames.labels[i])
        table.add_row(str(i), drawn, "; ".join(str(b) for b in boxes) or "-", escape(result.plan_summary or "-"))
    console.print(table)
    with grpc.insecure_channel(frontend) as channel:
        store = result_store_pb2_grpc.ResultStoreServiceStub(channel)
        stored = store.QueryDetections(result_store_pb2.QueryDetectionsRequest(model=DETECTOR, page_size=1000))
        by_label = {
            label: len(store.QueryDetections(
                result_store_pb2.QueryDetectionsRequest(model=DETECTOR, label=label, min_score=0.5, page_size=1000)
            ).detections)
            for label in CLASSES
        }  # fmt: skip
    console.print(
        f"stored {len(stored.detections)} detection records; with score >= 0.5, by label: "
        + ", ".join(f"{label} {count}" for label, count in by_label.items())
    )
    if found_by_servers < len(found_any):
        console.print(f"{len(found_any) - found_by_servers} boxes came from frames whose plan ended on the device "
                      "(decode + NMS ran there; the device keeps them)")  # fmt: skip
    if first is not None and first[1]:
        index, boxes = first
        png = draw_detections(frames.images[index], boxes, frames.boxes[index], work / "detections.png")
        console.print(f"frame {index} with its boxes: {png}")
    return bool(found_any) and len(stored.detections) >= found_by_servers
