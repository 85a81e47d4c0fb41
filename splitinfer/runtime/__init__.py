"""Running partitions: loaded, checked, measured - on onnxruntime or on the interpreter.

Names load on first use: :mod:`splitinfer.runtime.ort` (onnxruntime sessions over numpy) is torch-free and
is what the edge agent imports; the rest needs torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitinfer.runtime.artifact import (
        PartitionArtifact,
        load_partition,
        load_partition_artifact,
        read_partition_artifact,
        save_partition_artifact,
    )
    from splitinfer.runtime.ort import OrtOptions, available_providers
    from splitinfer.runtime.partition import RUNTIMES, LoadedPartition, PartitionKey, RuntimeOptions

__all__ = [
    "RUNTIMES",
    "LoadedPartition",
    "OrtOptions",
    "PartitionArtifact",
    "PartitionKey",
    "RuntimeOptions",
    "available_providers",
    "load_partition",
    "load_partition_artifact",
    "read_partition_artifact",
    "save_partition_artifact",
]

_WHERE = {
    "PartitionArtifact": "artifact",
    "load_partition": "artifact",
    "load_partition_artifact": "artifact",
    "read_partition_artifact": "artifact",
    "save_partition_artifact": "artifact",
    "OrtOptions": "ort",
    "available_providers": "ort",
    "RUNTIMES": "partition",
    "LoadedPartition": "partition",
    "PartitionKey": "partition",
    "RuntimeOptions": "partition",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'splitinfer.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"splitinfer.runtime.{module}"), name)
