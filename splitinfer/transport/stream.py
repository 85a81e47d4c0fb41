"""Tensor streams: the Tensor/TensorChunk sequence inside Process and Infer calls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from splitinfer.codecs import DEFAULT_CHUNK_BYTES, split_tensor
from splitinfer.v1 import tensor_pb2

__all__ = ["tensor_items", "wrap_items"]

M = TypeVar("M")


def tensor_items(
    tensors: Iterable[tensor_pb2.Tensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tensor_pb2.Tensor | tensor_pb2.TensorChunk]:
    """Each tensor as a Tensor message, followed by its chunks when it is large."""
    for tensor in tensors:
        yield from split_tensor(tensor, chunk_bytes)


def wrap_items(cls: Any, items: Iterable[tensor_pb2.Tensor | tensor_pb2.TensorChunk]) -> Iterator[Any]:
    """Wraps tensors and chunks into a stream message type with ``tensor`` and ``chunk`` fields."""
    for item in items:
        yield cls(tensor=item) if isinstance(item, tensor_pb2.Tensor) else cls(chunk=item)
