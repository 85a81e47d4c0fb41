"""The post-processing stage declaration and the registry of stage functions."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from splitinfer.errors import InvalidArgument

__all__ = ["STAGES", "PostprocessSpec", "Stage", "register", "run_postprocess"]

#: A stage: the model outputs it reads, its parameters -> the tensors it produces, by name.
Stage = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], dict[str, torch.Tensor]]

STAGES: dict[str, Stage] = {}

_MAX_PARAMS_BYTES = 64 * 1024


def register(name: str) -> Callable[[Stage], Stage]:
    """Registers a stage function under ``name`` (e.g. ``"detection.decode_nms"``)."""

    def add(fn: Stage) -> Stage:
        if name in STAGES and STAGES[name] is not fn:
            raise ValueError(f"post-processing stage {name!r} is registered twice")
        STAGES[name] = fn
        return fn

    return add


def _known_stages() -> dict[str, Stage]:
    # Stages live in the packages of their tasks; importing them registers them.
    import splitinfer.detection.postprocess  # noqa: F401

    return STAGES


@dataclass(frozen=True)
class PostprocessSpec:
    """A declared stage: its registered name, the model outputs it reads, its JSON parameters, and the
    tensors it produces (names; what a client gets back instead of the model's raw outputs)."""

    stage: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stage or not self.inputs or not self.outputs:
            raise InvalidArgument("a post-processing stage needs a name, inputs and outputs")
        try:
            text = json.dumps(dict(self.params), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"post-processing parameters must be plain JSON: {exc}") from None
        if len(text) > _MAX_PARAMS_BYTES:
            raise InvalidArgument(f"post-processing parameters exceed {_MAX_PARAMS_BYTES} bytes")

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "params": json.loads(json.dumps(dict(self.params), sort_keys=True)),
        }

    @classmethod
    def from_json(cls, data: Any) -> PostprocessSpec:
        """Parses a manifest's ``postprocess`` entry; InvalidArgument when malformed or the stage is unknown."""
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"post-processing entry is not an object: {type(data).__name__}")
        try:
            stage, inputs, outputs = data["stage"], data["inputs"], data["outputs"]
            params = data.get("params", {})
        except KeyError as exc:
            raise InvalidArgument(f"post-processing entry lacks {exc}") from None
        if not isinstance(stage, str) or not isinstance(params, Mapping):
            raise InvalidArgument("post-processing entry: stage must be a string and params an object")
        if not all(isinstance(v, str) for v in [*inputs, *outputs]):
            raise InvalidArgument("post-processing entry: inputs and outputs must be tensor names")
        if stage not in _known_stages():
            raise InvalidArgument(f"unknown post-processing stage {stage!r}; known: {sorted(STAGES)}")
        return cls(stage, tuple(inputs), tuple(outputs), dict(params))


def run_postprocess(spec: PostprocessSpec, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Runs the stage on the model's outputs; returns the stage's tensors (named ``spec.outputs``).

    InvalidArgument when an input is missing or the stage produces other names than declared.
    """
    stages = _known_stages()
    if spec.stage not in stages:
        raise InvalidArgument(f"unknown post-processing stage {spec.stage!r}; known: {sorted(stages)}")
    missing = [name for name in spec.inputs if name not in outputs]
    if missing:
        raise InvalidArgument(f"post-processing stage {spec.stage}: model outputs {missing} are missing")
    result = stages[spec.stage]({name: outputs[name] for name in spec.inputs}, spec.params)
    if sorted(result) != sorted(spec.outputs):
        raise InvalidArgument(
            f"post-processing stage {spec.stage} produced {sorted(result)}, declared {sorted(spec.outputs)}"
        )
    return result
