"""Running a model's post-processing stage where the plan ends: on encoded outputs, as a front-end or an
edge agent holds them, and turning a detector's outputs into the Result Store's detection records."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from splitinfer.codecs.wire import decode_tensor, encode_tensor
from splitinfer.errors import SplitInferError
from splitinfer.postprocess.stage import PostprocessSpec, run_postprocess
from splitinfer.v1 import result_store_pb2, tensor_pb2

__all__ = ["StageLookup", "apply_postprocess", "detections_from", "final_outputs"]

DETECTION_OUTPUTS = ("boxes", "scores", "labels")


def detections_from(
    spec: PostprocessSpec, outputs: Sequence[tensor_pb2.Tensor] | dict[str, object]
) -> list[result_store_pb2.Detection]:
    """Detection records of a detection stage's outputs (empty for other stages)."""
    from splitinfer.detection.postprocess import STAGE, detections_of
    from splitinfer.results.detections import detections_to_proto

    if spec.stage != STAGE:
        return []
    if isinstance(outputs, dict):
        tensors = outputs
    else:
        tensors = {t.name: decode_tensor(t) for t in outputs if t.name in DETECTION_OUTPUTS}
    classes = [str(c) for c in spec.params.get("classes", [])]
    return detections_to_proto(detections_of(tensors, classes))  # type: ignore[arg-type]


def apply_postprocess(
    spec: PostprocessSpec | None, outputs: Sequence[tensor_pb2.Tensor]
) -> tuple[list[tensor_pb2.Tensor], list[result_store_pb2.Detection]]:
    """The request's outputs after the stage (the stage's tensors, raw, replacing the ones it read; other
    model outputs kept) and the detections among them. Without a stage: the outputs unchanged, no boxes."""
    if spec is None:
        return list(outputs), []
    decoded = {t.name: decode_tensor(t) for t in outputs if t.name in spec.inputs}
    produced = run_postprocess(spec, decoded)
    kept = [t for t in outputs if t.name not in spec.inputs]
    encoded = [encode_tensor(produced[name], name) for name in spec.outputs]
    return kept + encoded, detections_from(spec, produced)  # type: ignore[arg-type]


class StageLookup:
    """The post-processing stage of ``(model, variant)``, read once from its division manifest.

    ``manifest_of`` returns the parsed division manifest (a :class:`splitinfer.pool.manifest.DivisionManifest`)
    of a model variant, as a front-end's pool or an agent's cache has it.
    """

    def __init__(self, manifest_of: Callable[[str, str], object]) -> None:
        self._manifest_of = manifest_of
        self._cache: dict[tuple[str, str], PostprocessSpec | None] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str, variant: str) -> PostprocessSpec | None:
        key = (model, variant)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        spec = getattr(self._manifest_of(model, variant), "postprocess", None)
        with self._lock:
            self._cache[key] = spec
        return spec


def final_outputs(
    manifest: Mapping[str, Any], values: Mapping[str, torch.Tensor], *, ran_last_here: bool, request_id: str = ""
) -> dict[str, torch.Tensor]:
    """What a request answers, where the plan ends (an edge agent holding a division manifest as JSON).

    Without a post-processing stage: the model's outputs. With one: when the last partition ran here
    (``ran_last_here``), the stage runs here on the model's outputs; otherwise the front-end ran it and its
    outputs are among ``values``. The stage's outputs replace the model outputs it read.
    SplitInferError naming what is missing.
    """
    model_outputs = [str(s).split(":", 1)[0] for s in manifest.get("outputs", [])]
    raw = manifest.get("postprocess")
    stage = PostprocessSpec.from_json(raw) if raw is not None else None
    if stage is None:
        wanted = model_outputs
        found: dict[str, torch.Tensor] = dict(values)
    else:
        found = dict(values)
        if ran_last_here:
            missing = [n for n in stage.inputs if n not in found]
            if missing:
                raise SplitInferError(f"request {request_id}: outputs {missing} never arrived")
            found.update(run_postprocess(stage, {n: found[n] for n in stage.inputs}))
        wanted = [n for n in model_outputs if n not in stage.inputs] + list(stage.outputs)
    missing = [n for n in wanted if n not in found]
    if missing:
        raise SplitInferError(f"request {request_id}: outputs {missing} never arrived")
    return {n: found[n] for n in wanted}
