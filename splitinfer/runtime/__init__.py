"""Running partitions: loaded, checked, measured."""

from splitinfer.runtime.artifact import load_partition_artifact, save_partition_artifact
from splitinfer.runtime.partition import LoadedPartition, PartitionKey

__all__ = ["LoadedPartition", "PartitionKey", "load_partition_artifact", "save_partition_artifact"]
