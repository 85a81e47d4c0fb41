"""Partitions as ONNX models: export from the partition's program, check against the interpreter, quantise.

Public surface: :func:`build_partition_onnx` (what the pool calls at division time) and
:func:`export_onnx`. Needs torch, onnx and onnxscript: it runs where models are divided, never on a device.
"""

from splitinfer.onnx.build import ONNX_FILE, TOLERANCES, build_partition_onnx, check_against_interpreter
from splitinfer.onnx.export import OPSET, ExportedOnnx, export_onnx, onnx_name

__all__ = [
    "ONNX_FILE",
    "OPSET",
    "TOLERANCES",
    "ExportedOnnx",
    "build_partition_onnx",
    "check_against_interpreter",
    "export_onnx",
    "onnx_name",
]
