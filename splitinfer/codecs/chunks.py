"""Large tensors as a stream: a Tensor message with the first part, then TensorChunk continuations.

Receiving side, in two layers:

* :class:`ChunkAssembler` turns the stream into :class:`WireTensor` s: the tensor's metadata (a ``Tensor``
  message with no payload) plus its encoded payload, assembled into ONE buffer allocated when the tensor's
  first message arrives (no list of parts, no join). A ``precheck`` hook sees each tensor's name, dtype,
  shape and encoding before anything of it is buffered; ``max_total_bytes`` bounds what one stream may
  declare. A WireTensor is decoded straight from its buffer (:func:`~splitinfer.codecs.wire.decode_wire`)
  and relayed from it (:func:`split_wire`) without building a new message.
* :class:`TensorAssembler` is the same for callers that want complete ``Tensor`` messages.

Every check runs as the bytes arrive: the declared size must fit what dtype and shape allow, chunks must
continue a tensor in progress at the right offset, and no tensor may receive more than it declared;
``finish`` reports tensors left incomplete (a truncated stream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from splitinfer.codecs.errors import DecodeError
from splitinfer.codecs.wire import DEFAULT_LIMITS, DecodeLimits, WireTensor, aligned_buffer, decode_shape
from splitinfer.codecs.wire import head_of as _head_of
from splitinfer.v1 import tensor_pb2

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "ChunkAssembler",
    "Precheck",
    "TensorAssembler",
    "WireTensor",
    "split_tensor",
    "split_wire",
]

#: Payload bytes per stream message: well under gRPC's default 4 MiB limit, and measured fastest here with
#: the frame path (``splitinfer.transport.frames``) under grpc.aio: a 16 MiB hop took 33 ms with 1 MiB chunks,
#: 33-40 ms with 2-4 MiB, 44 ms with 512 KiB; 64 MiB 159 ms with 1 MiB, 166-196 ms otherwise; 4 MiB alike
#: from 512 KiB to 2 MiB (benchmarks/pipeline.py --chunk-sweep).
DEFAULT_CHUNK_BYTES = 1 << 20


class ChunkLike(Protocol):
    """A TensorChunk, or a view of one (``splitinfer.transport.frames.Chunk``)."""

    @property
    def name(self) -> str: ...

    @property
    def offset(self) -> int: ...

    @property
    def data(self) -> bytes | memoryview: ...


#: Sees a tensor's metadata (``Tensor`` message, payload not yet complete) before it is buffered; raises to refuse.
Precheck = Callable[[tensor_pb2.Tensor], None]


def split_wire(
    tensor: WireTensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tensor_pb2.Tensor | tensor_pb2.TensorChunk]:
    """The stream messages for one WireTensor: one Tensor when small, else a head and chunks, each payload
    slice copied once into its message."""
    view = memoryview(tensor.payload)
    head = tensor_pb2.Tensor()
    head.CopyFrom(tensor.head)
    head.payload = bytes(view[:chunk_bytes])
    yield head
    for offset in range(chunk_bytes, len(view), chunk_bytes):
        yield tensor_pb2.TensorChunk(name=tensor.name, offset=offset, data=bytes(view[offset : offset + chunk_bytes]))


def split_tensor(
    message: tensor_pb2.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tensor_pb2.Tensor | tensor_pb2.TensorChunk]:
    """The stream messages for one encoded tensor: the Tensor itself when small, else a head and chunks."""
    if message.payload_size_bytes <= chunk_bytes:
        yield message
        return
    yield from split_wire(WireTensor.from_message(message), chunk_bytes)


class ChunkAssembler:
    """Collects a stream of Tensor and TensorChunk messages into :class:`WireTensor` s; see the module."""

    def __init__(
        self,
        limits: DecodeLimits = DEFAULT_LIMITS,
        *,
        precheck: Precheck | None = None,
        max_total_bytes: int | None = None,
    ) -> None:
        self._limits = limits
        self._precheck = precheck
        self._max_total_bytes = max_total_bytes
        self._partial: dict[str, tuple[tensor_pb2.Tensor, memoryview, int]] = {}
        self._seen: set[str] = set()
        #: Payload bytes all tensors of this stream declared so far.
        self.declared_bytes = 0

    def add(self, item: tensor_pb2.Tensor | tensor_pb2.TensorChunk | WireTensor | ChunkLike) -> WireTensor | None:
        """Feeds one message; returns a tensor when this message completed it. A WireTensor is the start of
        a tensor as read without a protobuf copy (its payload, the first part, a view of the message); a
        chunk may be anything with a TensorChunk's ``name``, ``offset`` and ``data``."""
        if isinstance(item, WireTensor):
            return self._start(item.head, item.payload)
        if isinstance(item, tensor_pb2.Tensor):
            return self._start(item, None)
        return self._continue(item)

    def _start(self, message: tensor_pb2.Tensor, payload: bytes | bytearray | memoryview | None) -> WireTensor | None:
        name = message.name
        if name in self._seen:
            raise DecodeError(f"tensor {name[:200]!r} was sent twice in one request")
        self._seen.add(name)
        decode_shape(message, self._limits)  # refuses absurd shapes before any bytes are buffered
        declared = message.payload_size_bytes
        # A compressed payload can exceed the raw size only slightly; anything beyond that is a lie.
        bound = self._limits.max_tensor_bytes + (self._limits.max_tensor_bytes >> 6) + 1024
        if declared > bound:
            raise DecodeError(f"tensor {name[:200]!r}: declared payload of {declared} bytes exceeds {bound}")
        if self._precheck is not None:
            self._precheck(message)
        self.declared_bytes += declared
        if self._max_total_bytes is not None and self.declared_bytes > self._max_total_bytes:
            raise DecodeError(
                f"tensors of this request declare {self.declared_bytes} bytes, over its budget of "
                f"{self._max_total_bytes}"
            )
        head = message  # a WireTensor's head carries no payload
        if payload is None:
            payload = message.payload  # reading a bytes field copies it: read it once
            head = _head_of(message)
        received = memoryview(payload).nbytes
        if received > declared:
            raise DecodeError(
                f"tensor {name[:200]!r}: payload is {received} bytes but payload_size_bytes declares {declared}"
            )
        if received == declared:
            return WireTensor(head, payload)
        buffer = aligned_buffer(declared)  # pages are committed only as chunks fill them
        buffer[:received] = payload
        self._partial[name] = (head, buffer, received)
        return None

    def _continue(self, chunk: tensor_pb2.TensorChunk | ChunkLike) -> WireTensor | None:
        entry = self._partial.get(chunk.name)
        if entry is None:
            raise DecodeError(f"chunk for tensor {chunk.name[:200]!r}, which is not being streamed")
        head, buffer, received = entry
        if chunk.offset != received:
            raise DecodeError(f"chunk for tensor {chunk.name[:200]!r} at offset {chunk.offset}, expected {received}")
        data = chunk.data  # reading a bytes field copies it: read it once
        end = received + memoryview(data).nbytes
        if end > len(buffer):
            raise DecodeError(f"tensor {chunk.name[:200]!r}: chunks carry more than the declared {len(buffer)} bytes")
        buffer[received:end] = data
        if end < len(buffer):
            self._partial[chunk.name] = (head, buffer, end)
            return None
        del self._partial[chunk.name]
        return WireTensor(head, buffer)

    @property
    def incomplete(self) -> list[str]:
        """Names of tensors still waiting for chunks."""
        return sorted(self._partial)

    def finish(self) -> None:
        """DecodeError if any tensor is still incomplete (the stream ended early)."""
        if self._partial:
            detail = ", ".join(
                f"{name[:200]!r} ({received} of {len(buffer)} bytes)"
                for name, (_, buffer, received) in sorted(self._partial.items())
            )
            raise DecodeError(f"stream ended with incomplete tensors: {detail}")


class TensorAssembler:
    """:class:`ChunkAssembler` for callers that want complete ``Tensor`` messages (they keep their encoded
    payload, so they can be relayed unchanged)."""

    def __init__(self, limits: DecodeLimits = DEFAULT_LIMITS, *, precheck: Precheck | None = None) -> None:
        self._inner = ChunkAssembler(limits, precheck=precheck)

    def add(self, item: tensor_pb2.Tensor | tensor_pb2.TensorChunk) -> tensor_pb2.Tensor | None:
        complete = self._inner.add(item)
        if complete is None:
            return None
        if isinstance(item, tensor_pb2.Tensor):
            return item  # complete in one message: relay it as received
        return complete.to_message()

    @property
    def incomplete(self) -> list[str]:
        return self._inner.incomplete

    def finish(self) -> None:
        self._inner.finish()
