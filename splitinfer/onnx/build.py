"""A partition's ONNX twin as the pool stores it: exported, quantised for int8, checked against the
interpreter, or the reason there is none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from splitinfer.onnx.export import export_onnx
from splitinfer.onnx.quantize import quantize_int8_onnx
from splitinfer.pool.manifest import OnnxInfo
from splitinfer.program import CompiledProgram, Program
from splitinfer.runtime.ort import OrtOptions, OrtSession

__all__ = ["ONNX_FILE", "TOLERANCES", "build_partition_onnx", "check_against_interpreter"]

ONNX_FILE = "model.onnx"
#: (absolute, relative to the reference's largest magnitude) bound on |ORT - interpreter| per variant.
#: fp32 differs by reassociation only; fp16 by half-precision rounding in different kernels; int8 ONNX
#: quantises activations too (static QDQ convolutions, dynamic matmuls) where the interpreter's int8 variant
#: is weight-only, so it may differ by a few quantisation steps of the activations.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-4),
    "fp16": (2e-2, 2e-2),
    "bf16": (5e-2, 5e-2),
    "int8": (5e-2, 0.15),
}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def check_against_interpreter(
    session: OrtSession,
    program: Program,
    samples: Sequence[Mapping[str, torch.Tensor]],
    tolerance: tuple[float, float],
    dynamic_batch: bool,
) -> tuple[float, float]:
    """Largest |ORT - interpreter| over ``samples`` (and, for a symbolic batch, of the samples stacked into
    one batch against each sample alone) and the bound it was held to; ValueError beyond the bound."""
    interpreter = CompiledProgram(program)
    worst, bound = 0.0, 0.0
    atol, rtol = tolerance
    singles: list[dict[str, np.ndarray]] = []
    for sample in samples:
        reference = interpreter(sample)
        got = session.run({k: _numpy(v) for k, v in sample.items()})
        singles.append(got)
        for spec in program.outputs:
            ref = reference[spec.name].float()
            out = torch.from_numpy(np.asarray(got[spec.name], dtype=np.float32))
            if tuple(out.shape) != tuple(ref.shape):
                raise ValueError(f"ONNX output {spec.name!r} has shape {list(out.shape)}, expected {list(ref.shape)}")
            err = float((out - ref).abs().max()) if ref.numel() else 0.0
            limit = atol + rtol * (float(ref.abs().max()) if ref.numel() else 0.0)
            if not err <= limit:  # NaN fails too
                raise ValueError(f"ONNX output {spec.name!r} differs from the interpreter by {err:.3g} > {limit:.3g}")
            worst, bound = max(worst, err), max(bound, limit)
    if dynamic_batch and len(samples) > 1:
        stacked = {name: np.concatenate([_numpy(s[name]) for s in samples]) for name in samples[0]}
        batched = session.run(stacked)
        for spec in program.outputs:
            rows = np.concatenate([s[spec.name] for s in singles])
            diff = float(np.abs(batched[spec.name].astype(np.float32) - rows.astype(np.float32)).max())
            limit = atol + rtol * float(np.abs(rows).max())
            if not diff <= limit:
                raise ValueError(f"ONNX output {spec.name!r} batched differs from one-by-one by {diff:.3g}")
            worst = max(worst, diff)
    return worst, bound


def build_partition_onnx(
    program: Program, variant: str, samples: Sequence[Mapping[str, torch.Tensor]]
) -> tuple[bytes | None, OnnxInfo]:
    """The partition's ONNX model and its manifest entry, or ``(None, info)`` whose ``reason`` says why it
    runs on the interpreter only (the export failed, onnxruntime cannot run it, or it was out of tolerance).

    ``samples``: feeds of the partition's inputs (real activations from the model where possible); the int8
    variant calibrates on them and every variant is checked on them.
    """
    stage = "export"
    try:
        # int8 runs quantised kernels, not the blocked float32 layout the hints are for.
        exported = export_onnx(program, layout_hints=variant != "int8")
        model, quantization = exported.model, ""
        if variant == "int8":
            stage = "int8 quantisation"
            calibration = [{exported.names[k]: _numpy(v) for k, v in s.items()} for s in samples]
            model, quantization = quantize_int8_onnx(model, calibration)
        stage = "onnxruntime load"
        session = OrtSession(model, exported.names, OrtOptions(intra_op_threads=1, inter_op_threads=1))
        stage = "check against the interpreter"
        tolerance = TOLERANCES.get(variant, TOLERANCES["fp32"])
        worst, bound = check_against_interpreter(session, program, samples, tolerance, exported.dynamic_batch)
    except Exception as exc:  # every failure of a foreign toolchain means the same: interpreter only
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return None, OnnxInfo(reason=f"{stage} failed: {type(exc).__name__}: {first}")
    return model, OnnxInfo(
        file=ONNX_FILE,
        opset=exported.opset,
        names=dict(exported.names),
        dynamic_batch=exported.dynamic_batch,
        quantization=quantization,
        max_abs_error=worst,
        tolerance=bound,
        reason="" if exported.dynamic_batch else f"static batch: {exported.static_reason}",
    )
