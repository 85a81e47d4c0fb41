"""The data plane's tensor-carrying messages read and written without a protobuf copy of their payloads.

``Process`` and ``ProcessOnce`` carry tensors whose payloads are most of every message. grpc-python hands a
method's (de)serializer the whole message as ``bytes``; parsing it into a protobuf copies each payload
(and reading a ``bytes`` field copies it again), and building a message to send copies it twice more. Here
the same protobuf wire format is scanned by hand instead: a payload is a ``memoryview`` slice of the bytes
gRPC received (no copy), every other field is parsed by protobuf from its own bytes (the header, a
tensor's name, dtype, shape and encoding, with protobuf's merge semantics), and a message to send is one
``b"".join`` of its pieces (each payload copied once, straight from its buffer). Any client speaking the
ordinary protobuf messages talks to these servers, and back.

* :func:`parse_once_request` / :func:`parse_process_request` (servers), :func:`parse_once_response` /
  :func:`parse_process_response` (clients): ``bytes`` to :class:`OnceFrame` / :class:`StreamFrame`, whose
  tensors are :class:`~splitinfer.codecs.WireTensor` parts (``head`` without payload, ``payload`` a
  read-only view) and whose chunks are :class:`Chunk` s. Anything that is not valid protobuf of the
  message raises :class:`~splitinfer.codecs.DecodeError` (INVALID_ARGUMENT).
* :func:`once_request` / :func:`once_response`, :func:`stream_frames` and :func:`header_frame` /
  :func:`done_frame`: the bytes to send.

Nothing here checks sizes or names: the stream reader and :class:`~splitinfer.codecs.ChunkAssembler` do,
as for protobuf messages (a frame's parts go through the same checks before anything is buffered).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError

from splitinfer.codecs import DEFAULT_CHUNK_BYTES, DecodeError, WireTensor
from splitinfer.v1 import model_server_pb2, tensor_pb2

__all__ = [
    "PROCESS_METHOD",
    "PROCESS_ONCE_METHOD",
    "Chunk",
    "OnceFrame",
    "StreamFrame",
    "done_frame",
    "header_frame",
    "once_request",
    "once_response",
    "parse_once_request",
    "parse_once_response",
    "parse_process_request",
    "parse_process_response",
    "stream_frames",
]

PROCESS_METHOD = "/splitinfer.v1.ModelServerService/Process"
PROCESS_ONCE_METHOD = "/splitinfer.v1.ModelServerService/ProcessOnce"

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_PAYLOAD_FIELD = 6  # Tensor.payload
_PADDING_FIELD = 7  # Tensor.padding: ignored on reading
#: Payloads at least this large are placed at a 16-byte aligned offset of their message (``Tensor.padding``),
#: so that the receiver may use them in place (``splitinfer.codecs.wire.SHARE_ALIGNMENT``); below it, copying
#: one costs no more than the padding's bookkeeping.
PAD_MIN_BYTES = 64 << 10
_ALIGN = 16
_EMPTY = memoryview(b"")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A ``TensorChunk`` whose ``data`` is a view of the received message (what ChunkAssembler reads)."""

    name: str
    offset: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class OnceFrame:
    """A ``ProcessOnceRequest`` or ``ProcessOnceResponse``: header (requests), tensors, done (responses)."""

    header: model_server_pb2.RequestHeader | None
    tensors: list[WireTensor]
    done: model_server_pb2.ProcessDone


class StreamFrame:
    """One ``ProcessRequest`` or ``ProcessResponse``: ``kind`` is "header", "tensor", "chunk", "done" or
    None (an empty message), and the attribute of that name holds its value, as for the protobuf message
    (``WhichOneof("kind")`` works too)."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str | None, value: Any) -> None:
        self.kind = kind
        self.value = value

    def WhichOneof(self, _group: str) -> str | None:
        return self.kind

    def __getattr__(self, name: str) -> Any:
        if name in ("header", "tensor", "chunk", "done"):
            return self.value if name == self.kind else None
        raise AttributeError(name)


# Reading


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated message: a varint runs past its end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise DecodeError("malformed message: a varint longer than 10 bytes")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field's key, start and end of its value) for each field; a
    varint's value is ``_varint(buf, value_start, end)``. (One-byte keys and lengths, nearly all of them,
    are read inline: this runs for every field of every data-plane message.)"""
    pos = start
    while pos < end:
        key_start = pos
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise DecodeError("malformed message: field number 0")
        value_start = pos
        if wire == _LEN:
            if pos >= end:
                raise DecodeError("truncated message: a varint runs past its end")
            size = buf[pos]
            if size < 0x80:
                value_start = pos + 1
            else:
                size, value_start = _varint(buf, pos, end)
            pos = value_start + size
        elif wire == _VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise DecodeError(f"malformed message: field {field} has wire type {wire}")
        if pos > end:
            raise DecodeError(f"truncated message: field {field} runs past its end")
        yield field, wire, key_start, value_start, pos


def _expect_len(field: int, wire: int, what: str) -> None:
    if wire != _LEN:
        raise DecodeError(f"malformed {what}: field {field} has wire type {wire}, not length-delimited")


def _parse(cls: Any, data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"malformed {cls.DESCRIPTOR.name}: {exc}") from None


def _tensor(buf: memoryview, spans: list[tuple[int, int]]) -> WireTensor:
    """The Tensor whose serialized form is the concatenation of ``spans`` (protobuf's merge of repeated
    occurrences): the payload (the last one wins) as a view, everything else parsed by protobuf."""
    meta: list[memoryview] = []
    payload = _EMPTY
    for start, end in spans:
        for field, wire, key_start, value_start, value_end in _fields(buf, start, end):
            if field == _PAYLOAD_FIELD and wire == _LEN:
                payload = buf[value_start:value_end]
            elif field == _PADDING_FIELD:
                continue  # alignment filler: not part of the tensor (a relay pads afresh)
            else:
                meta.append(buf[key_start:value_end])
    head = _parse(tensor_pb2.Tensor, b"".join(meta))
    return WireTensor(head, payload)


def _chunk(buf: memoryview, spans: list[tuple[int, int]]) -> Chunk:
    name, offset, data = b"", 0, _EMPTY
    for start, end in spans:
        for field, wire, _, value_start, value_end in _fields(buf, start, end):
            if field == 1:
                _expect_len(field, wire, "TensorChunk")
                name = bytes(buf[value_start:value_end])
            elif field == 2:
                if wire != _VARINT:
                    raise DecodeError(f"malformed TensorChunk: field 2 has wire type {wire}")
                offset, _ = _varint(buf, value_start, value_end)
            elif field == 3:
                _expect_len(field, wire, "TensorChunk")
                data = buf[value_start:value_end]
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("malformed TensorChunk: its name is not UTF-8") from None
    return Chunk(text, offset, data)


def _submessage(cls: Any, buf: memoryview, spans: list[tuple[int, int]]) -> Any:
    return _parse(cls, b"".join(buf[start:end] for start, end in spans))


def _once(data: bytes, header_field: int | None, tensors_field: int, done_field: int | None) -> OnceFrame:
    buf = memoryview(data).cast("B")
    header: list[tuple[int, int]] = []
    done: list[tuple[int, int]] = []
    tensors: list[WireTensor] = []
    for field, wire, _, start, end in _fields(buf, 0, len(buf)):
        if field == tensors_field:
            _expect_len(field, wire, "message")
            tensors.append(_tensor(buf, [(start, end)]))
        elif field == header_field:
            _expect_len(field, wire, "message")
            header.append((start, end))
        elif field == done_field:
            _expect_len(field, wire, "message")
            done.append((start, end))
    return OnceFrame(
        _submessage(model_server_pb2.RequestHeader, buf, header) if header else None,
        tensors,
        _submessage(model_server_pb2.ProcessDone, buf, done) if done else model_server_pb2.ProcessDone(),
    )


def parse_once_request(data: bytes) -> OnceFrame:
    """A ``ProcessOnceRequest`` (header 1, tensors 2); ``header`` is None when absent."""
    return _once(data, 1, 2, None)


def parse_once_response(data: bytes) -> OnceFrame:
    """A ``ProcessOnceResponse`` (tensors 1, done 2)."""
    return _once(data, None, 1, 2)


def _stream(data: bytes, kinds: dict[int, str]) -> StreamFrame:
    """A message with one oneof: the last field of the oneof set wins (as in protobuf), and repeated
    occurrences of that field merge."""
    buf = memoryview(data).cast("B")
    kind: str | None = None
    spans: list[tuple[int, int]] = []
    for field, wire, _, start, end in _fields(buf, 0, len(buf)):
        name = kinds.get(field)
        if name is None:
            continue  # an unknown field: ignored, as protobuf does
        _expect_len(field, wire, "message")
        if name != kind:
            kind, spans = name, []
        spans.append((start, end))
    if kind is None:
        return StreamFrame(None, None)
    if kind == "tensor":
        return StreamFrame(kind, _tensor(buf, spans))
    if kind == "chunk":
        return StreamFrame(kind, _chunk(buf, spans))
    cls = model_server_pb2.RequestHeader if kind == "header" else model_server_pb2.ProcessDone
    return StreamFrame(kind, _submessage(cls, buf, spans))


_REQUEST_KINDS = {1: "header", 2: "tensor", 3: "chunk"}
_RESPONSE_KINDS = {1: "tensor", 2: "chunk", 3: "done"}


def parse_process_request(data: bytes) -> StreamFrame:
    """A ``ProcessRequest`` (header 1, tensor 2, chunk 3)."""
    return _stream(data, _REQUEST_KINDS)


def parse_process_response(data: bytes) -> StreamFrame:
    """A ``ProcessResponse`` (tensor 1, chunk 2, done 3)."""
    return _stream(data, _RESPONSE_KINDS)


# Writing


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire: int = _LEN) -> bytes:
    return _varint_bytes(field << 3 | wire)


_PAYLOAD_KEY = _key(_PAYLOAD_FIELD)


def _tensor_pieces(head: tensor_pb2.Tensor, payload: Any, at: int = -1) -> tuple[list[Any], int]:
    """The pieces of a Tensor message (``head``'s fields, then ``payload``) and their total length. With
    ``at`` (the offset in the whole message where this Tensor's length prefix begins) and a payload of at
    least PAD_MIN_BYTES, a ``padding`` field before the payload puts it at a 16-byte aligned offset."""
    meta = head.SerializeToString()
    size = len(payload) if isinstance(payload, bytes) else memoryview(payload).nbytes
    if not size:
        return [meta], len(meta)
    length = _varint_bytes(size)
    plain = len(meta) + len(_PAYLOAD_KEY) + len(length) + size
    if at < 0 or size < PAD_MIN_BYTES:
        return [meta, _PAYLOAD_KEY, length, payload], plain
    prefix = len(meta) + len(_PAYLOAD_KEY) + len(length)
    for pad in _PADDING_PREFIX:  # the padding field: its key, its length, pad - 2 zero bytes
        total = plain + pad
        if (at + len(_varint_bytes(total)) + prefix + pad) % _ALIGN == 0:
            return [meta, _PADDING_PREFIX[pad], _PAYLOAD_KEY, length, payload], total
    return [meta, _PAYLOAD_KEY, length, payload], plain  # unreachable: 32 consecutive paddings cover every offset


def _field(field: int, pieces: list[Any], size: int, out: list[Any]) -> None:
    out.append(_key(field))
    out.append(_varint_bytes(size))
    out.extend(pieces)


def _payload_head(tensor: WireTensor) -> tensor_pb2.Tensor:
    head = tensor.head
    if head.payload or head.padding:  # a complete message used as a head: send its metadata only
        head = tensor_pb2.Tensor()
        head.CopyFrom(tensor.head)
        head.ClearField("payload")
        head.ClearField("padding")
    return head


def _once_message(prefix: bytes, tensors_field: int, tensors: Iterable[WireTensor], suffix: bytes) -> bytes:
    out: list[Any] = [prefix]
    at = len(prefix)
    key = _key(tensors_field)
    for tensor in tensors:
        pieces, size = _tensor_pieces(_payload_head(tensor), tensor.payload, at + len(key))
        _field(tensors_field, pieces, size, out)
        at += len(key) + len(_varint_bytes(size)) + size
    out.append(suffix)
    return b"".join(out)


def once_request(header: model_server_pb2.RequestHeader, tensors: Iterable[WireTensor]) -> bytes:
    """A serialized ``ProcessOnceRequest``; each payload copied once."""
    return _once_message(model_server_pb2.ProcessOnceRequest(header=header).SerializeToString(), 2, tensors, b"")


def once_response(tensors: Iterable[WireTensor], done: model_server_pb2.ProcessDone) -> bytes:
    """A serialized ``ProcessOnceResponse``; each payload copied once."""
    return _once_message(b"", 1, tensors, model_server_pb2.ProcessOnceResponse(done=done).SerializeToString())


def header_frame(header: model_server_pb2.RequestHeader) -> bytes:
    """A serialized ``ProcessRequest`` carrying ``header``."""
    return model_server_pb2.ProcessRequest(header=header).SerializeToString()


def done_frame(done: model_server_pb2.ProcessDone) -> bytes:
    """A serialized ``ProcessResponse`` carrying ``done``."""
    return model_server_pb2.ProcessResponse(done=done).SerializeToString()


def stream_frames(
    tensors: Iterable[WireTensor], *, request: bool, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[bytes]:
    """Serialized ``ProcessRequest`` (``request``) or ``ProcessResponse`` messages for the tensors: each a
    Tensor with the first ``chunk_bytes`` of its payload, then TensorChunks with the rest; each payload
    slice copied once, from the tensor's buffer into its message."""
    tensor_field, chunk_field = (2, 3) if request else (1, 2)
    for tensor in tensors:
        view = memoryview(tensor.payload)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        head = _payload_head(tensor)
        out: list[Any] = []
        pieces, size = _tensor_pieces(head, view[:chunk_bytes], len(_key(tensor_field)))
        _field(tensor_field, pieces, size, out)
        yield b"".join(out)
        if len(view) <= chunk_bytes:
            continue
        name = head.name.encode("utf-8")
        name_piece = _key(1) + _varint_bytes(len(name)) + name
        for offset in range(chunk_bytes, len(view), chunk_bytes):
            data = view[offset : offset + chunk_bytes]
            offset_piece = _key(2, _VARINT) + _varint_bytes(offset)
            length = _varint_bytes(len(data))
            size = len(name_piece) + len(offset_piece) + len(_PAYLOAD_CHUNK_KEY) + len(length) + len(data)
            yield b"".join((_key(chunk_field), _varint_bytes(size), name_piece, offset_piece, _PAYLOAD_CHUNK_KEY,
                            length, data))  # fmt: skip


_PAYLOAD_CHUNK_KEY = _key(3)  # TensorChunk.data
#: A ``padding`` field of n bytes in all (key, one-byte length, n - 2 zeros), for n of 2-33: the payload's
#: offset moves by one per byte (by two where the Tensor's length prefix grows a byte), so every offset is met.
_PADDING_PREFIX = {n: _key(_PADDING_FIELD) + _varint_bytes(n - 2) + bytes(n - 2) for n in range(2, 2 + 2 * _ALIGN)}
