"""The Model Pool: content-addressed artifacts, division manifests, and the ModelPoolService.

The names below load on first use: :mod:`splitinfer.pool.manifest` (typed manifests) is read by the runtime
and the torch-free agent, which must not pull the pool (and through it the divider and torch) with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitinfer.pool.manifest import DivisionManifest, PartitionEntry, TensorSpec
    from splitinfer.pool.pool import DIVISION_FORMAT, ModelPool, VariantEntry
    from splitinfer.pool.store import BlobStore

__all__ = [
    "DIVISION_FORMAT",
    "BlobStore",
    "DivisionManifest",
    "ModelPool",
    "PartitionEntry",
    "TensorSpec",
    "VariantEntry",
]

_WHERE = {
    "DIVISION_FORMAT": "splitinfer.pool.manifest",
    "DivisionManifest": "splitinfer.pool.manifest",
    "PartitionEntry": "splitinfer.pool.manifest",
    "TensorSpec": "splitinfer.pool.manifest",
    "ModelPool": "splitinfer.pool.pool",
    "VariantEntry": "splitinfer.pool.pool",
    "BlobStore": "splitinfer.pool.store",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'splitinfer.pool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
