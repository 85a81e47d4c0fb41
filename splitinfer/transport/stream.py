"""Tensor streams: the Tensor/TensorChunk sequence inside Process, Infer and Deliver calls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from splitinfer.codecs import DEFAULT_CHUNK_BYTES, WireTensor
from splitinfer.v1 import tensor_pb2

__all__ = [
    "HOP_ONCE_MAX_BYTES",
    "ONCE_ANSWER_TOO_LARGE",
    "ONCE_MAX_BYTES",
    "hop_once_max_bytes",
    "stream_messages",
    "stream_wire",
]

#: Requests whose input payloads add up to at most this go in one unary ProcessOnce call; larger ones stream.
#: A streaming call costs about 2 ms more than a unary one in grpcio, which a chain pays at every hop. (The
#: front-end's InferOnce takes at most this much.)
ONCE_MAX_BYTES = 2 << 20
#: In the RESOURCE_EXHAUSTED message of an InferOnce whose answer is over ONCE_MAX_BYTES: the result is stored,
#: and the Infer stream under the same request id delivers it (what splitinfer's clients then do).
ONCE_ANSWER_TOO_LARGE = "fetch it with Infer under the same request id"
#: The same between a client or a node and the next node (NodeClient, AsyncRouteClient, the forwarder). Measured
#: here with a copy partition, unary against chunked Process (1 MiB chunks): 4 MiB 15.3 vs 22.3 ms, 16 MiB 55.8
#: vs 61.9 ms; every chunk is one more grpc.aio message each way, and the caller assembles streamed answers
#: with one more copy. Well below the nodes' max_message_bytes (64 MiB), which still bounds one message.
HOP_ONCE_MAX_BYTES = 16 << 20
#: Room for the header (request id, route, timings) and framing beside the payloads of one unary message.
ONCE_HEADROOM_BYTES = 64 << 10


def hop_once_max_bytes(max_message_bytes: int) -> int:
    """The payload bytes a hop sends as one ProcessOnce on a channel whose messages are bounded by
    ``max_message_bytes``: HOP_ONCE_MAX_BYTES, or less so that header and payloads fit one message (a node
    configured with a smaller message limit streams larger hops in chunks instead of failing them)."""
    return max(0, min(HOP_ONCE_MAX_BYTES, max_message_bytes - ONCE_HEADROOM_BYTES))


def stream_messages(
    cls: Any, tensors: Iterable[tensor_pb2.Tensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[Any]:
    """Stream messages of type ``cls`` (a message with ``tensor`` and ``chunk`` fields) for the tensors.

    A tensor whose payload exceeds ``chunk_bytes`` becomes a ``tensor`` message with the first part and
    ``chunk`` messages with the rest. Messages are filled in place: each payload byte is copied once into
    its stream message, never through an intermediate Tensor or TensorChunk.
    """
    for tensor in tensors:
        payload = tensor.payload  # reading a bytes field copies it: read it once
        if len(payload) <= chunk_bytes:
            message = cls()
            message.tensor.CopyFrom(tensor)
            yield message
            continue
        head = cls()
        target = head.tensor
        target.name = tensor.name
        target.dtype = tensor.dtype
        target.shape.extend(tensor.shape)
        target.encoding.CopyFrom(tensor.encoding)
        target.payload_size_bytes = tensor.payload_size_bytes
        view = memoryview(payload)
        target.payload = view[:chunk_bytes].tobytes()
        yield head
        for offset in range(chunk_bytes, len(payload), chunk_bytes):
            message = cls()
            chunk = message.chunk
            chunk.name = tensor.name
            chunk.offset = offset
            chunk.data = view[offset : offset + chunk_bytes].tobytes()
            yield message


def stream_wire(cls: Any, tensors: Iterable[WireTensor], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Any]:
    """:func:`stream_messages` for WireTensors (payloads kept apart from their metadata): each payload slice
    is copied once, straight from the tensor's buffer into its stream message."""
    for tensor in tensors:
        view = memoryview(tensor.payload)
        head = cls()
        head.tensor.CopyFrom(tensor.head)
        head.tensor.payload = view[:chunk_bytes].tobytes()
        yield head
        for offset in range(chunk_bytes, len(view), chunk_bytes):
            message = cls()
            chunk = message.chunk
            chunk.name = tensor.head.name
            chunk.offset = offset
            chunk.data = view[offset : offset + chunk_bytes].tobytes()
            yield message
