"""Partition artifacts on disk: a program plus a manifest that names it and pins every file's sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.program import Program, load_program, save_program
from splitinfer.runtime.partition import PartitionKey

__all__ = ["MANIFEST_FILE", "load_partition_artifact", "save_partition_artifact", "write_manifest"]

MANIFEST_FILE = "manifest.json"
FORMAT = "splitinfer.partition/1"


def save_partition_artifact(program: Program, key: PartitionKey, directory: Path) -> str:
    """Writes the partition into ``directory``; returns the sha256 of its manifest."""
    files = save_program(program, directory)
    return write_manifest(directory, key, [str(s) for s in program.inputs], [str(s) for s in program.outputs], files)


def write_manifest(
    directory: Path, key: PartitionKey, inputs: list[str], outputs: list[str], files: dict[str, str]
) -> str:
    """Writes the partition manifest for files already in ``directory``; returns its sha256."""
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "model": key.model,
        "variant": key.variant,
        "partition": key.partition,
        "inputs": inputs,
        "outputs": outputs,
        "files": files,
    }
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    (directory / MANIFEST_FILE).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load_partition_artifact(directory: Path, manifest_sha256: str = "") -> tuple[PartitionKey, Program]:
    """Reads and verifies a partition artifact: the manifest against ``manifest_sha256`` when given, then
    every file against the manifest, before anything is parsed."""
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
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"{path} is not a valid partition manifest: {exc!r}") from None
    return key, load_program(directory, files)
