"""The Model Pool: content-addressed artifacts, division manifests, and the ModelPoolService."""

from splitinfer.pool.pool import DIVISION_FORMAT, ModelPool, VariantEntry
from splitinfer.pool.store import BlobStore

__all__ = ["DIVISION_FORMAT", "BlobStore", "ModelPool", "VariantEntry"]
