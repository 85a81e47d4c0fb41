"""Partitions on ONNX Runtime: one session per loaded partition, threads and providers from the config.

numpy in, numpy out; no torch here, so the torch-free edge agent runs the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from splitinfer.errors import FailedPrecondition, InvalidArgument

__all__ = ["PROVIDERS", "OrtOptions", "OrtSession", "available_providers"]

#: Execution providers by the short name a config uses.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build can use on this machine."""
    import onnxruntime as ort

    present = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in present]


@dataclass(frozen=True, slots=True)
class OrtOptions:
    """How a node (or an agent) runs ONNX partitions.

    ``providers``: short names in order of preference (``cpu``, ``cuda``, ``tensorrt``); each must be
    available, the last one should be ``cpu`` to catch the operators a GPU provider lacks.
    ``intra_op_threads`` / ``inter_op_threads``: 0 keeps onnxruntime's default. ``spinning``: whether idle
    pool threads busy-wait for work; off by default, since spinning threads steal the cores of a 1-2 core
    host from the gRPC threads that feed them.
    """

    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    spinning: bool = False

    def __post_init__(self) -> None:
        if not self.providers:
            raise InvalidArgument("at least one execution provider is required (e.g. 'cpu')")
        unknown = [p for p in self.providers if p not in PROVIDERS]
        if unknown:
            raise InvalidArgument(f"unknown execution providers {unknown}; known: {sorted(PROVIDERS)}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise InvalidArgument("thread counts must be >= 0 (0: onnxruntime's default)")

    def check_available(self) -> None:
        """FailedPrecondition naming the providers this machine lacks."""
        available = available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise FailedPrecondition(
                f"execution providers {missing} are not available in this onnxruntime build on this machine; "
                f"available: {available}"
            )


class OrtSession:
    """An onnxruntime session over one partition's model, created once, run by any thread.

    ``names``: partition tensor name -> ONNX value name (from the manifest); results come back under the
    partition's names.
    """

    def __init__(self, model: bytes, names: Mapping[str, str], options: OrtOptions) -> None:
        import onnxruntime as ort

        options.check_available()
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if options.spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model, so, providers=[PROVIDERS[p] for p in options.providers])
        except Exception as exc:  # onnxruntime raises its own exception types, not importable portably
            raise InvalidArgument(f"onnxruntime cannot load the partition model: {exc}") from None
        self.providers = tuple(self._session.get_providers())
        onnx_inputs = {i.name for i in self._session.get_inputs()}
        self._inputs = {name: onnx for name, onnx in names.items() if onnx in onnx_inputs}
        outputs = [o.name for o in self._session.get_outputs()]
        by_onnx = {onnx: name for name, onnx in names.items()}
        missing = [o for o in outputs if o not in by_onnx]
        if missing or len(self._inputs) != len(onnx_inputs):
            raise InvalidArgument(f"ONNX model's values {sorted(onnx_inputs)} / {outputs} do not match the names map")
        self._outputs = [(by_onnx[o], o) for o in outputs]

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self._outputs]

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Runs the model on named numpy arrays (already checked by the caller)."""
        onnx_feeds = {onnx: feeds[name] for name, onnx in self._inputs.items()}
        wanted = self._outputs if output_names is None else [(n, o) for n, o in self._outputs if n in output_names]
        results = self._session.run([o for _, o in wanted], onnx_feeds)
        return {name: np.asarray(value) for (name, _), value in zip(wanted, results, strict=True)}
