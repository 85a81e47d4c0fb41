"""A loaded partition: an engine (onnxruntime or the interpreter) plus the checks that guard it.

onnxruntime runs the partition when its ONNX twin exists and the runtime options ask for it (the default);
the interpreter is the reference and the fallback: for a partition ONNX could not export, for a node
configured ``runtime = "interpreter"``, and always available. A partition exported with a symbolic batch
dimension accepts any batch size (every other dimension exactly) on onnxruntime, and may batch concurrent
requests (see :mod:`splitinfer.runtime.batcher`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from splitinfer.errors import InvalidArgument
from splitinfer.pool.manifest import OnnxInfo
from splitinfer.program import CompiledProgram, Program, ValueSpec
from splitinfer.runtime.aliasing import InputEffects, input_effects
from splitinfer.runtime.batcher import BatchStats, DynamicBatcher
from splitinfer.runtime.ort import OrtOptions, OrtSession

log = logging.getLogger("splitinfer.runtime")

__all__ = ["RUNTIMES", "LoadedPartition", "PartitionKey", "RuntimeOptions"]

RUNTIMES = ("onnxruntime", "interpreter")


@dataclass(frozen=True, slots=True, order=True)
class PartitionKey:
    """Model, variant and partition name: the identity of a partition."""

    model: str
    variant: str
    partition: str

    def __str__(self) -> str:
        return f"{self.model}@{self.variant}/{self.partition}"

    @classmethod
    def parse(cls, text: str) -> PartitionKey:
        """The key from its text form ``model@variant/partition`` (what registry records list)."""
        model_variant, slash, partition = text.partition("/")
        model, at, variant = model_variant.partition("@")
        if not (slash and at and model and variant and partition):
            raise InvalidArgument(f"partition key {text[:200]!r} is not model@variant/partition")
        return cls(model, variant, partition)


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How partitions run: engine, onnxruntime settings, dynamic batching (``max_batch_size`` 1: off)."""

    runtime: str = "onnxruntime"
    ort: OrtOptions = field(default_factory=OrtOptions)
    max_batch_size: int = 1
    max_queue_delay_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise InvalidArgument(f"runtime must be one of {list(RUNTIMES)}, got {self.runtime!r}")
        if self.max_batch_size < 1:
            raise InvalidArgument(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise InvalidArgument(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class LoadedPartition:
    """A partition ready to run, with its usage statistics.

    :meth:`run` checks that the inputs are exactly the partition's inputs with the right dtypes and shapes
    (any batch size on a symbolic batch dimension), and raises InvalidArgument naming what was expected
    otherwise. ``runtime`` says which engine runs it; ``fallback_reason`` why it is not onnxruntime when
    onnxruntime was asked for. ``input_effects`` says what running it does to its inputs' memory (computed
    once, at load): a partition whose :attr:`inputs_read_only` may be fed the bytes a request arrived in.
    """

    def __init__(
        self,
        key: PartitionKey,
        program: Program,
        *,
        onnx_model: bytes | None = None,
        onnx: OnnxInfo | None = None,
        options: RuntimeOptions | None = None,
        ewma_alpha: float = 0.2,
    ) -> None:
        self.key = key
        self.program = program
        self.options = options or RuntimeOptions()
        self.onnx = onnx or OnnxInfo()
        self._alpha = ewma_alpha
        self._lock = threading.Lock()
        self.completed = 0
        self.mean_compute_ms = 0.0
        self._session: OrtSession | None = None
        self._compiled: CompiledProgram | None = None
        self.fallback_reason = ""
        if self.options.runtime == "onnxruntime" and onnx_model is not None and self.onnx.available:
            self._session = OrtSession(onnx_model, self.onnx.names, self.options.ort)
            self.runtime = "onnxruntime"
        else:
            if self.options.runtime == "onnxruntime":
                self.fallback_reason = self.onnx.reason or "the artifact has no ONNX model"
            self._compiled = CompiledProgram(program)
            self.runtime = "interpreter"
        effects = input_effects(program)
        if self._session is not None:
            # onnxruntime never writes its feeds; what it returns is its own memory, but the ONNX model is
            # this program's export, so a program that returns (a view of) an input is kept conservative.
            effects = InputEffects(frozenset(), effects.returns)
        self.input_effects = effects
        self.dynamic_batch = self._session is not None and self.onnx.dynamic_batch
        self._batcher: DynamicBatcher | None = None
        if self.dynamic_batch and self.options.max_batch_size > 1:
            self._batcher = DynamicBatcher(
                self._run_numpy,
                max_batch_size=self.options.max_batch_size,
                max_queue_delay_ms=self.options.max_queue_delay_ms,
                name=str(key),
            )

    @property
    def inputs(self) -> tuple[ValueSpec, ...]:
        return self.program.inputs

    @property
    def outputs(self) -> tuple[ValueSpec, ...]:
        return self.program.outputs

    @property
    def writes_inputs(self) -> bool:
        """Whether running the partition may write any of its inputs in place."""
        return bool(self.input_effects.writes)

    @property
    def inputs_read_only(self) -> bool:
        """Whether the partition neither writes its inputs nor returns them (or views of them): its inputs
        may be read-only memory shared with others, such as the received message (no copy to decode)."""
        return self.input_effects.read_only

    @property
    def providers(self) -> tuple[str, ...]:
        return self._session.providers if self._session is not None else ()

    @property
    def batch_stats(self) -> BatchStats | None:
        return self._batcher.stats if self._batcher is not None else None

    def check_inputs(self, feeds: Mapping[str, torch.Tensor]) -> int:
        """Checks names, dtypes and shapes; returns the batch size (dimension 0; 1 for a static batch)."""
        expected = {s.name: s for s in self.program.inputs}
        if set(feeds) != set(expected):
            missing, extra = sorted(set(expected) - set(feeds)), sorted(set(feeds) - set(expected))
            raise InvalidArgument(
                f"partition {self.key} takes inputs {sorted(expected)}; missing {missing}, unexpected {extra}"
            )
        batches: set[int] = set()
        for name, spec in expected.items():
            tensor = feeds[name]
            shape = tuple(tensor.shape)
            if self.dynamic_batch:
                ok = tensor.dtype == spec.dtype and len(shape) == len(spec.shape) and shape[1:] == spec.shape[1:]
                ok = ok and shape[0] >= 1
                if ok:
                    batches.add(shape[0])
            else:
                ok = tensor.dtype == spec.dtype and shape == spec.shape
            if not ok:
                want = f"{spec} (any batch size in dimension 0)" if self.dynamic_batch else str(spec)
                raise InvalidArgument(
                    f"partition {self.key} input {name!r} must be {want}, got {_dtype_name(tensor.dtype)}{list(shape)}"
                )
        if len(batches) > 1:
            raise InvalidArgument(f"partition {self.key}: inputs disagree on the batch size: {sorted(batches)}")
        return batches.pop() if batches else 1

    @property
    def batches(self) -> bool:
        """Whether concurrent requests are batched (use :meth:`submit` so waiting holds no thread)."""
        return self._batcher is not None

    def submit(
        self, feeds: Mapping[str, torch.Tensor], timeout_s: float | None = None
    ) -> Future[dict[str, torch.Tensor]]:
        """Checks the inputs and queues them for the next batch; the future holds this request's rows.
        Only for a partition that :attr:`batches`."""
        if self._batcher is None:
            raise InvalidArgument(f"partition {self.key} does not batch requests")
        self.check_inputs(feeds)
        arrays = {name: t.detach().contiguous().numpy() for name, t in feeds.items()}
        start = time.perf_counter()
        inner = self._batcher.submit_future(arrays, timeout_s)
        result: Future[dict[str, torch.Tensor]] = Future()

        def finish(done: Future[dict[str, np.ndarray]]) -> None:
            if done.cancelled():
                result.cancel()
                return
            error = done.exception()
            if error is not None:
                result.set_exception(error)
                return
            self._record((time.perf_counter() - start) * 1e3)
            result.set_result({name: torch.from_numpy(v) for name, v in done.result().items()})

        inner.add_done_callback(finish)
        return result

    def _record(self, elapsed_ms: float) -> None:
        with self._lock:
            self.completed += 1
            self.mean_compute_ms = (
                elapsed_ms
                if self.completed == 1
                else (1 - self._alpha) * self.mean_compute_ms + self._alpha * elapsed_ms
            )

    def _run_numpy(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None
        return self._session.run(feeds)

    def run(self, feeds: Mapping[str, torch.Tensor], timeout_s: float | None = None) -> dict[str, torch.Tensor]:
        """Checks the inputs, runs the partition (in a batch with concurrent requests where it batches),
        records its compute time. ``timeout_s`` bounds the wait for a batch."""
        self.check_inputs(feeds)
        start = time.perf_counter()
        if self._session is None:
            assert self._compiled is not None
            outputs = self._compiled(feeds)
        else:
            arrays = {name: t.detach().contiguous().numpy() for name, t in feeds.items()}
            if self._batcher is not None:
                results = self._batcher.submit(arrays, timeout_s)
            else:
                results = self._session.run(arrays)
            outputs = {name: torch.from_numpy(value) for name, value in results.items()}
        self._record((time.perf_counter() - start) * 1e3)
        return outputs

    def warm_up(self) -> bool:
        """Runs the partition once on zero inputs of its specs, not counted in its statistics, so that lazy
        initialisation (onnxruntime's first-run allocations and kernel choices, the interpreter's first
        dispatches) is paid at load and not by the first request, as serving systems warm a model. Returns
        False, logging why, when the partition refuses zeros (it still serves real inputs)."""
        feeds = {s.name: torch.zeros(s.shape, dtype=s.dtype) for s in self.program.inputs}
        try:
            if self._session is None:
                assert self._compiled is not None
                self._compiled(feeds)
            else:
                self._session.run({name: t.numpy() for name, t in feeds.items()})
        except Exception as exc:  # a warm-up is an optimisation: never a reason to refuse the partition
            log.info("partition %s: warm-up on zero inputs failed (%s); its first request pays it", self.key, exc)
            return False
        return True

    def close(self) -> None:
        """Stops the batcher (requests still queued get UNAVAILABLE-free answers: they run first)."""
        if self._batcher is not None:
            self._batcher.close()
