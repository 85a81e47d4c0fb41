"""The Divider: cuts a model graph into a partition DAG sized to servers and device classes."""

from splitinfer.divider.capacity import DeviceClass, ServerCapacity, load_capacities
from splitinfer.divider.divide import DivideOptions, active_head_cuts, device_head, divide
from splitinfer.divider.division import Division, PartitionSpec, partition_at
from splitinfer.divider.local import LocalDivisionRunner

__all__ = [
    "DeviceClass",
    "DivideOptions",
    "Division",
    "LocalDivisionRunner",
    "PartitionSpec",
    "ServerCapacity",
    "active_head_cuts",
    "device_head",
    "divide",
    "load_capacities",
    "partition_at",
]
