"""Running partitions: loaded, checked, measured - on onnxruntime or on the interpreter."""

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
