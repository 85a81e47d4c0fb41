"""Whole-model programs in the pool, so that a variant can be divided again while the system runs.

A division is cut from a whole program; the pool's division manifests keep only the partitions. The division
controller re-divides a variant when the traffic or the servers change, so ``splitinfer divide`` also keeps
each variant's whole program here: its two files (graph JSON and safetensors weights) as blobs in the pool's
content-addressed store, and an index (``sources.json``: "model@variant" -> file sha256s) written atomically.
Reading verifies every file against its sha256, as every other pool read does.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

from splitinfer.errors import NotFound
from splitinfer.pool.pool import ModelPool
from splitinfer.program import Program
from splitinfer.program.serde import GRAPH_FILE, WEIGHTS_FILE, load_program, save_program

__all__ = ["get_source", "has_source", "put_source"]

INDEX_FILE = "sources.json"
_lock = threading.Lock()


def _index_path(pool: ModelPool) -> Path:
    return pool.root / INDEX_FILE


def _read_index(pool: ModelPool) -> dict[str, dict[str, str]]:
    path = _index_path(pool)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(k): {str(f): str(s) for f, s in v.items()} for k, v in data.items()}


def put_source(pool: ModelPool, model: str, variant: str, program: Program) -> dict[str, str]:
    """Stores ``program`` as the whole program of ``model@variant``; returns its files' sha256s."""
    with tempfile.TemporaryDirectory(dir=pool.root) as tmp:
        out = Path(tmp) / "program"
        save_program(program, out)
        files = {name: pool.store.put_bytes((out / name).read_bytes()) for name in (GRAPH_FILE, WEIGHTS_FILE)}
    with _lock:
        index = _read_index(pool)
        index[f"{model}@{variant}"] = files
        fd, tmp_path = tempfile.mkstemp(dir=pool.root, prefix=".sources-")
        with os.fdopen(fd, "w") as f:
            json.dump(index, f, indent=1, sort_keys=True)
        os.replace(tmp_path, _index_path(pool))
    return files


def has_source(pool: ModelPool, model: str, variant: str) -> bool:
    return f"{model}@{variant}" in _read_index(pool)


def get_source(pool: ModelPool, model: str, variant: str) -> Program:
    """The whole program of ``model@variant``, its files checked against their sha256s."""
    files = _read_index(pool).get(f"{model}@{variant}")
    if files is None:
        raise NotFound(f"the pool keeps no whole program of {model}@{variant}; divide it again to store one")
    with tempfile.TemporaryDirectory(dir=pool.root) as tmp:
        out = Path(tmp)
        for name, sha in files.items():
            (out / name).write_bytes(pool.store.read(sha))
        return load_program(out, files)
