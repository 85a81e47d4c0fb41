"""Detection pieces: the synthetic set, anchors and offsets, the decode + NMS stage, mAP, the declared stage
in manifests, and detection records in the Result Store (label, score, time window, paging)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from splitinfer.codecs.wire import decode_tensor, encode_tensor
from splitinfer.detection import (
    CLASSES,
    anchors,
    decode_nms,
    encode_boxes,
    mean_average_precision,
    nms,
    synthetic_detection_set,
)
from splitinfer.detection.anchors import decode_boxes
from splitinfer.errors import InvalidArgument, NotFound
from splitinfer.postprocess import PostprocessSpec, run_postprocess
from splitinfer.postprocess.apply import apply_postprocess
from splitinfer.results.detections import DetectionQuery
from splitinfer.results.store import ResultStore
from splitinfer.v1 import result_store_pb2
from splitinfer.zoo.detector import LEVELS, detector, detector_postprocess


def test_the_synthetic_set_is_deterministic_and_boxes_are_tight() -> None:
    a, b = synthetic_detection_set(6, seed=3), synthetic_detection_set(6, seed=3)
    assert torch.equal(a.images, b.images) and all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert not torch.equal(a.images, synthetic_detection_set(6, seed=4).images)
    for boxes, labels in zip(a.boxes, a.labels, strict=True):
        assert 1 <= len(boxes) <= 3 and len(labels) == len(boxes)
        assert (boxes >= 0).all() and (boxes <= 64).all() and (boxes[:, 2:] > boxes[:, :2] + 8).all()
        assert set(labels.tolist()) <= set(range(len(CLASSES)))


def test_offsets_round_trip_through_the_anchors() -> None:
    priors = anchors(LEVELS)
    assert priors.shape == (8 * 8 * 3 + 4 * 4 * 2, 4)
    boxes = torch.tensor([[10.0, 12.0, 30.0, 28.0]]).expand(len(priors), 4)
    assert torch.allclose(decode_boxes(encode_boxes(boxes, priors), priors), boxes, atol=1e-4)


def _logits_for(priors: torch.Tensor, picks: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.full((1, len(priors), len(CLASSES) + 1), -10.0)
    logits[0, :, 0] = 10.0  # background everywhere...
    for anchor, label in picks.items():  # ...except these anchors, confidently of these classes
        logits[0, anchor, 0] = -10.0
        logits[0, anchor, label + 1] = 10.0
    return logits, torch.zeros(1, len(priors), 4)


def test_decode_and_nms_keep_one_box_per_object_and_class() -> None:
    priors = anchors(LEVELS)
    params = detector_postprocess().params
    # Anchor 3 (the next cell's smallest) is shifted onto anchor 0 by its offsets: same box, same class ->
    # one kept (the higher score); anchor 1 (next size, same cell) is of another class -> kept too.
    logits, deltas = _logits_for(priors, {0: 1, 3: 1, 1: 2})
    logits[0, 3, 2] = 9.0
    deltas[0, 3, 0] = -(priors[3, 0] - priors[0, 0]) / priors[3, 2] / 0.1
    ((boxes, scores, labels),) = decode_nms(logits, deltas, params)
    assert sorted(labels.tolist()) == [1, 2] and (scores > 0.99).all()
    centre = priors[0]
    assert torch.allclose(
        boxes[labels == 1][0], torch.cat([centre[:2] - centre[2:] / 2, centre[:2] + centre[2:] / 2]).clamp(0, 64)
    )
    none = decode_nms(*_logits_for(priors, {}), params)[0]
    assert none[0].shape == (0, 4) and none[2].dtype == torch.int64


def test_nms_suppresses_overlaps_within_a_class_only() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [30, 30, 40, 40]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    assert nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]


def test_the_stage_refuses_bad_shapes_and_parameters() -> None:
    spec = detector_postprocess()
    priors = anchors(LEVELS)
    logits, deltas = _logits_for(priors, {5: 0})
    out = run_postprocess(spec, {"class_logits": logits, "box_deltas": deltas})
    assert list(out) == ["boxes", "scores", "labels"] and out["labels"].tolist() == [0]
    with pytest.raises(InvalidArgument, match="class_logits must be"):
        run_postprocess(spec, {"class_logits": logits[:, :10], "box_deltas": deltas})
    with pytest.raises(InvalidArgument, match="are missing"):
        run_postprocess(spec, {"class_logits": logits})
    bad = PostprocessSpec(spec.stage, spec.inputs, spec.outputs, {**spec.params, "score_threshold": 7})
    with pytest.raises(InvalidArgument, match="score_threshold"):
        run_postprocess(bad, {"class_logits": logits, "box_deltas": deltas})
    with pytest.raises(InvalidArgument, match="unknown post-processing stage"):
        PostprocessSpec.from_json({**spec.to_json(), "stage": "os.system"})
    with pytest.raises(InvalidArgument, match="plain JSON"):
        PostprocessSpec(spec.stage, spec.inputs, spec.outputs, {"x": math.nan})
    assert PostprocessSpec.from_json(spec.to_json()) == spec


def test_apply_on_encoded_outputs_gives_the_stage_tensors_and_detections() -> None:
    spec = detector_postprocess()
    logits, deltas = _logits_for(anchors(LEVELS), {7: 2})
    outputs, found = apply_postprocess(
        spec, [encode_tensor(logits, "class_logits"), encode_tensor(deltas, "box_deltas")]
    )
    assert [t.name for t in outputs] == ["boxes", "scores", "labels"]
    assert decode_tensor(outputs[2]).tolist() == [2]
    assert len(found) == 1 and found[0].label == "triangle" and found[0].label_id == 2 and found[0].score > 0.99
    unchanged, none = apply_postprocess(None, outputs)
    assert unchanged == outputs and none == []


def test_mean_average_precision_through_pycocotools() -> None:
    pytest.importorskip("pycocotools")
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([[5.0, 5.0, 30.0, 25.0], [40, 40, 60, 60]])]
    labels = [torch.tensor([0]), torch.tensor([1, 2])]
    perfect = [(b, torch.ones(len(b)), lab) for b, lab in zip(boxes, labels, strict=True)]
    assert mean_average_precision(perfect, boxes, labels, CLASSES).map == pytest.approx(1.0)
    wrong_class = [(b, torch.ones(len(b)), (lab + 1) % 3) for b, lab in zip(boxes, labels, strict=True)]
    assert mean_average_precision(wrong_class, boxes, labels, CLASSES).map == pytest.approx(0.0)
    empty = [(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)) for _ in boxes]
    assert mean_average_precision(empty, boxes, labels, CLASSES).map == 0.0


def test_the_detector_exports_with_its_stage_declared() -> None:
    model, (x,) = detector()
    out = model(x)
    n = len(anchors(LEVELS))
    assert out["class_logits"].shape == (1, n, len(CLASSES) + 1) and out["box_deltas"].shape == (1, n, 4)
    spec = model.postprocess
    assert isinstance(spec, PostprocessSpec) and spec.stage == "detection.decode_nms"
    assert set(spec.inputs) == set(out)


def _result(
    request_id: str, created: int, boxes: list[tuple[str, float]], caller: str = "cam"
) -> result_store_pb2.StoredResult:
    return result_store_pb2.StoredResult(
        request_id=request_id, caller=caller, device_id=caller, model="detector", variant="fp32",
        created_unix_ms=created,
        detections=[
            result_store_pb2.Detection(x_min=1, y_min=2, x_max=11, y_max=12, label=label,
                                       label_id=CLASSES.index(label) if label in CLASSES else 0, score=score)
            for label, score in boxes
        ],
    )  # fmt: skip


def test_detection_records_by_label_score_time_window_and_pages(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    store.put(_result("r1", 1000, [("circle", 0.9), ("square", 0.4)]))
    store.put(_result("r2", 2000, [("circle", 0.35), ("circle", 0.8), ("triangle", 0.95)]))
    store.put(_result("r3", 3000, [("circle", 0.6)], caller="other"))
    assert store.put(_result("r1", 1000, [("circle", 0.9)])) is False  # a retry stores no second set
    assert store.detections.count() == 6
    circles, _ = store.detections.query(DetectionQuery(label="circle"))
    assert [(r.request_id, round(r.detection.score, 2)) for r in circles] == [
        ("r3", 0.6), ("r2", 0.35), ("r2", 0.8), ("r1", 0.9)
    ]  # fmt: skip
    confident, _ = store.detections.query(DetectionQuery(label="circle", min_score=0.7))
    assert [r.request_id for r in confident] == ["r2", "r1"]
    window, _ = store.detections.query(DetectionQuery(since_unix_ms=1500, until_unix_ms=3000))
    assert {r.request_id for r in window} == {"r2"} and len(window) == 3
    mine, _ = store.detections.query(DetectionQuery(caller="cam", label="circle"))
    assert {r.caller for r in mine} == {"cam"}
    record = circles[-1]
    assert (record.model, record.variant, record.device_id, record.created_unix_ms) == ("detector", "fp32", "cam", 1000)
    assert (record.detection.x_min, record.detection.y_max, record.detection.label_id) == (1, 12, 1)
    seen, token, pages = [], "", 0
    while True:
        page, token = store.detections.query(DetectionQuery(page_size=2, page_token=token))
        seen += [(r.request_id, r.detection.label, round(r.detection.score, 2)) for r in page]
        pages += 1
        if not token:
            break
    assert pages == 3 and len(seen) == 6 and len(set(seen)) == 6


def test_malformed_detections_and_tokens_are_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    for bad in (("circle", 1.5), ("circle", math.nan), ("x" * 200, 0.5)):
        with pytest.raises(InvalidArgument):
            store.put(_result("bad", 1, [bad]))
    with pytest.raises(NotFound):
        store.get("bad", "cam")  # refused whole: the result was not stored either
    inverted = _result("inv", 1, [("circle", 0.5)])
    inverted.detections[0].x_max = -5
    with pytest.raises(InvalidArgument, match="x_max"):
        store.put(inverted)
    for token in ("nope", "W10=", "x" * 2000, "WzEsICJhIiwgImIiLCAxLjVd"):
        with pytest.raises(InvalidArgument, match="page_token"):
            store.detections.query(DetectionQuery(page_token=token))
    for query in (
        DetectionQuery(min_score=2.0),
        DetectionQuery(since_unix_ms=5, until_unix_ms=1),
        DetectionQuery(page_size=-1),
    ):
        with pytest.raises(InvalidArgument):
            store.detections.query(query)


def test_one_frame_is_drawn_with_its_boxes(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from splitinfer.detection.demo import draw_detections
    from splitinfer.detection.postprocess import Box

    frames = synthetic_detection_set(1, seed=5)
    x0, y0, x1, y1 = frames.boxes[0][0].tolist()
    box = Box(x0, y0, x1, y1, label=CLASSES[int(frames.labels[0][0])], label_id=0, score=0.9)
    path = draw_detections(frames.images[0], [box], frames.boxes[0], tmp_path / "frame.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_retention_takes_a_results_detections_with_it(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db", max_rows=2)
    for i in range(4):
        store.put(_result(f"r{i}", 1000 + i, [("circle", 0.9), ("square", 0.5)]))
    assert store.count() == 2 and store.detections.count() == 4
    kept, _ = store.detections.query(DetectionQuery())
    assert {r.request_id for r in kept} == {"r2", "r3"}


def test_the_agent_side_runs_the_stage_only_where_the_plan_ends() -> None:
    from splitinfer.errors import SplitInferError
    from splitinfer.postprocess.apply import final_outputs

    spec = detector_postprocess()
    manifest = {"outputs": ["class_logits:float32[1, 224, 4]", "box_deltas:float32[1, 224, 4]"]}
    logits, deltas = _logits_for(anchors(LEVELS), {9: 0})
    raw = {"class_logits": logits, "box_deltas": deltas}
    assert final_outputs(manifest, raw, ran_last_here=True) == raw  # no stage declared: the model's outputs
    declared = {**manifest, "postprocess": spec.to_json()}
    here = final_outputs(declared, raw, ran_last_here=True)  # the device ran the tail: the stage runs here
    assert list(here) == ["boxes", "scores", "labels"] and here["labels"].tolist() == [0]
    remote = final_outputs(declared, dict(here), ran_last_here=False)  # the front-end ran it: passed through
    assert all(torch.equal(remote[k], here[k]) for k in here)
    with pytest.raises(SplitInferError, match="never arrived"):
        final_outputs(declared, raw, ran_last_here=False)
