"""The data plane's frames: the same wire format as the protobuf messages, payloads as views, and the
assembler's checks on them (lying sizes, chunks out of place) exactly as on protobuf messages."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitinfer.codecs import ChunkAssembler, CodecSpec, DecodeError, DecodeLimits, decode_wire, encode_wire
from splitinfer.transport import frames
from splitinfer.v1 import model_server_pb2, route_pb2, tensor_pb2


def _header() -> model_server_pb2.RequestHeader:
    step = route_pb2.RouteStep(partition=route_pb2.PartitionRef(model="m", variant="fp32", partition="p1"))
    return model_server_pb2.RequestHeader(request_id="r1", route=route_pb2.Route(steps=[step]), timeout_ms=500)


def _tensor(n: int, name: str = "x") -> tensor_pb2.Tensor:
    message = encode_wire(torch.arange(n, dtype=torch.float32), name).to_message()
    return message


@given(sizes=st.lists(st.integers(0, 3000), max_size=4))
@settings(max_examples=40, deadline=None)
def test_once_request_reads_like_protobuf_both_ways(sizes: list[int]) -> None:
    tensors = [_tensor(n, f"t{i}") for i, n in enumerate(sizes)]
    ours = frames.parse_once_request(
        model_server_pb2.ProcessOnceRequest(header=_header(), tensors=tensors).SerializeToString()
    )
    assert ours.header == _header()
    assert [t.head.name for t in ours.tensors] == [t.name for t in tensors]
    assert [bytes(t.payload) for t in ours.tensors] == [t.payload for t in tensors]
    assert all(not t.head.payload for t in ours.tensors)  # heads carry metadata only
    # and what we write, protobuf reads
    written = frames.once_request(_header(), ours.tensors)
    assert model_server_pb2.ProcessOnceRequest.FromString(written) == model_server_pb2.ProcessOnceRequest(
        header=_header(), tensors=tensors
    )


def test_once_response_round_trip_keeps_timings() -> None:
    done = model_server_pb2.ProcessDone(timings=[model_server_pb2.StepTiming(node="n", compute_ms=1.5)])
    wire = encode_wire(torch.ones(3, 4), "y")
    parsed = frames.parse_once_response(frames.once_response([wire], done))
    assert parsed.header is None
    assert parsed.done == done
    assert torch.equal(decode_wire(parsed.tensors[0].head, parsed.tensors[0].payload), torch.ones(3, 4))
    protobuf = model_server_pb2.ProcessOnceResponse.FromString(frames.once_response([wire], done))
    assert protobuf.tensors[0].payload == bytes(wire.payload)


@pytest.mark.parametrize("request_side", [True, False])
@pytest.mark.parametrize("n", [0, 5, 1000, 4097])
def test_stream_frames_reassemble_and_read_like_protobuf(request_side: bool, n: int) -> None:
    wire = encode_wire(torch.randn(n), "z", CodecSpec())
    cls = model_server_pb2.ProcessRequest if request_side else model_server_pb2.ProcessResponse
    parse = frames.parse_process_request if request_side else frames.parse_process_response
    assembler = ChunkAssembler()
    complete = []
    sent = list(frames.stream_frames([wire], request=request_side, chunk_bytes=1024))
    assert len(sent) == max(1, -(-4 * n // 1024))
    for data in sent:
        message = cls.FromString(data)  # valid protobuf
        frame = parse(data)
        assert frame.WhichOneof("kind") == message.WhichOneof("kind")
        got = assembler.add(frame.value)
        if got is not None:
            complete.append(got)
    assembler.finish()
    assert len(complete) == 1 and bytes(complete[0].payload) == bytes(wire.payload)


def test_oneof_last_field_wins_and_repeats_merge() -> None:
    header = model_server_pb2.ProcessRequest(header=_header()).SerializeToString()
    chunk = model_server_pb2.ProcessRequest(chunk=tensor_pb2.TensorChunk(name="a", offset=4, data=b"xy"))
    frame = frames.parse_process_request(header + chunk.SerializeToString())
    assert frame.kind == "chunk" and frame.chunk.name == "a" and frame.chunk.offset == 4
    assert bytes(frame.chunk.data) == b"xy" and frame.header is None
    more = model_server_pb2.ProcessRequest(header=model_server_pb2.RequestHeader(entry_step=2))
    merged = frames.parse_process_request(header + more.SerializeToString())
    expected = model_server_pb2.ProcessRequest.FromString(header + more.SerializeToString())
    assert merged.header == expected.header
    assert frames.parse_process_request(b"").kind is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x12",  # a length-delimited field with no length
        b"\x12\x05ab",  # a length past the end
        b"\x12\x02\x32\x7f",  # a tensor whose payload runs past its end
        b"\x13",  # a group (wire type 3)
        b"\x00\x00",  # field number 0
        b"\x10\x01",  # the tensor field as a varint
        b"\x1a\x03\x0a\x01\xff",  # a chunk whose name is not UTF-8
        b"\x12\x02\x08\xff",  # a tensor with a truncated varint
        b"\x0a\x02\x0a\xff",  # a header protobuf cannot parse
    ],
)
def test_malformed_bytes_are_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        frames.parse_process_request(data)
    with pytest.raises(DecodeError):
        frames.parse_once_request(data.replace(b"\x1a", b"\x12"))


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_random_garbage_is_parsed_or_refused_never_anything_else(data: bytes) -> None:
    for parse in (frames.parse_process_request, frames.parse_once_request, frames.parse_process_response):
        with contextlib.suppress(DecodeError):
            parse(data)


def test_lying_sizes_are_refused_by_the_assembler_as_for_protobuf() -> None:
    head = encode_wire(torch.zeros(4), "x").head
    lying = tensor_pb2.Tensor()
    lying.CopyFrom(head)
    lying.payload_size_bytes = 8  # declares 8, sends 16
    lying.payload = b"\x00" * 16
    data = model_server_pb2.ProcessRequest(tensor=lying)
    with pytest.raises(DecodeError, match="declares 8"):
        ChunkAssembler().add(frames.parse_process_request(data.SerializeToString()).tensor)
    absurd = tensor_pb2.Tensor(name="x", dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1 << 20], payload_size_bytes=4)
    frame = frames.parse_process_request(model_server_pb2.ProcessRequest(tensor=absurd).SerializeToString())
    with pytest.raises(DecodeError):
        ChunkAssembler(DecodeLimits(max_tensor_bytes=1024)).add(frame.tensor)  # shape over the limit


def test_a_payload_read_in_place_is_copied_before_a_partition_sees_it() -> None:
    """A view of a received message is read-only: decoding must hand the partition its own writable copy."""
    wire = encode_wire(torch.arange(16, dtype=torch.float32), "x")
    parsed = frames.parse_once_request(frames.once_request(_header(), [wire])).tensors[0]
    assert isinstance(parsed.payload, memoryview) and parsed.payload.readonly
    decoded = decode_wire(parsed.head, parsed.payload)
    decoded.add_(1)  # would fault or corrupt the message if it aliased read-only memory
    assert torch.equal(decoded, torch.arange(16, dtype=torch.float32) + 1)
