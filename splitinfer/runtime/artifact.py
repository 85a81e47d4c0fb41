"""Partition artifacts on disk: a program (and its ONNX twin, when it has one) plus a manifest that names
it and pins every file's sha256."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.pool.manifest import OnnxInfo
from splitinfer.program import Program, load_program, save_program
from splitinfer.runtime.partition import LoadedPartition, PartitionKey, RuntimeOptions

__all__ = [
    "MANIFEST_FILE",
    "PartitionArtifact",
    "load_partition",
    "load_partition_artifact",
    "manifest_bytes",
    "read_partition_artifact",
    "save_partition_artifact",
    "write_manifest",
]

MANIFEST_FILE = "manifest.json"
FORMAT = "splitinfer.partition/1"


@dataclass(frozen=True)
class PartitionArtifact:
    key: PartitionKey
    program: Program
    onnx: OnnxInfo
    #: The verified ONNX model, when the manifest names one.
    onnx_model: bytes | None


def save_partition_artifact(program: Program, key: PartitionKey, directory: Path) -> str:
    """Writes the partition into ``directory``; returns the sha256 of its manifest."""
    files = save_program(program, directory)
    return write_manifest(directory, key, [str(s) for s in program.inputs], [str(s) for s in program.outputs], files)


def write_manifest(
    directory: Path,
    key: PartitionKey,
    inputs: list[str],
    outputs: list[str],
    files: dict[str, str],
    onnx: OnnxInfo | None = None,
) -> str:
    """Writes the partition manifest for files already in ``directory``; returns its sha256."""
    data = manifest_bytes(key, inputs, outputs, files, onnx)
    (directory / MANIFEST_FILE).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(
    key: PartitionKey, inputs: list[str], outputs: list[str], files: dict[str, str], onnx: OnnxInfo | None = None
) -> bytes:
    """The partition manifest's bytes (what :func:`write_manifest` writes; its sha256 names the artifact)."""
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "model": key.model,
        "variant": key.variant,
        "partition": key.partition,
        "inputs": inputs,
        "outputs": outputs,
        "files": files,
    }
    if onnx is not None:
        manifest["onnx"] = onnx.to_json()
    return json.dumps(manifest, indent=1, sort_keys=True).encode()


def _read_manifest(directory: Path, manifest_sha256: str) -> tuple[PartitionKey, dict[str, str], OnnxInfo]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise NotFound(f"no partition artifact at {directory} ({MANIFEST_FILE} missing)")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if manifest_sha256 and actual != manifest_sha256:
        raise FailedPrecondition(f"{path}: sha256 {actual} does not match the expected {manifest_sha256}")
    try:
        manifest = json.loads(data)
        if manifest.get("format") != FORMAT:
            raise InvalidArgument(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        key = PartitionKey(str(manifest["model"]), str(manifest["variant"]), str(manifest["partition"]))
        files = {str(k): str(v) for k, v in manifest["files"].items()}
        onnx = OnnxInfo.from_json(manifest.get("onnx", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"{path} is not a valid partition manifest: {exc!r}") from None
    if onnx.file and onnx.file not in files:
        raise InvalidArgument(f"{path}: the ONNX model {onnx.file!r} is not among the pinned files")
    return key, files, onnx


def load_partition_artifact(directory: Path, manifest_sha256: str = "") -> tuple[PartitionKey, Program]:
    """Reads and verifies a partition artifact: the manifest against ``manifest_sha256`` when given, then
    every file against the manifest, before anything is parsed."""
    key, files, _ = _read_manifest(directory, manifest_sha256)
    return key, load_program(directory, files)


def read_partition_artifact(directory: Path, manifest_sha256: str = "", *, with_onnx: bool = True) -> PartitionArtifact:
    """The whole artifact, verified: program, ONNX entry and (``with_onnx``) the ONNX model's bytes."""
    key, files, onnx = _read_manifest(directory, manifest_sha256)
    program = load_program(directory, files)
    model = None
    if with_onnx and onnx.file:
        path = directory / onnx.file
        if not path.is_file():
            raise NotFound(f"ONNX model {path} does not exist")
        model = path.read_bytes()
        actual = hashlib.sha256(model).hexdigest()
        if actual != files[onnx.file]:
            raise FailedPrecondition(f"{path}: sha256 {actual} does not match the expected {files[onnx.file]}")
    return PartitionArtifact(key, program, onnx, model)


def load_partition(
    directory: Path, manifest_sha256: str = "", options: RuntimeOptions | None = None
) -> LoadedPartition:
    """A verified artifact as a partition ready to run with ``options`` (onnxruntime by default)."""
    options = options or RuntimeOptions()
    artifact = read_partition_artifact(directory, manifest_sha256, with_onnx=options.runtime == "onnxruntime")
    return LoadedPartition(
        artifact.key, artifact.program, onnx_model=artifact.onnx_model, onnx=artifact.onnx, options=options
    )
