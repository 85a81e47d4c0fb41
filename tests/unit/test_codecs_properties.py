"""Property tests: round trips over random dtypes, shapes and values; random garbage never crashes."""

from __future__ import annotations

import contextlib

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from splitinfer.codecs import (
    CodecSpec,
    DecodeError,
    DecodeLimits,
    TensorAssembler,
    decode_tensor,
    encode_tensor,
    split_tensor,
)
from splitinfer.v1 import tensor_pb2

CODECS = st.sampled_from(["none", "lz4", "zstd", "fp16", "bf16+lz4", "int8+zstd", "int8c"])
LOSSLESS = st.sampled_from(["none", "lz4", "zstd", "zstd:1"])
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.int8, torch.uint8, torch.bool])
SHAPES = array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
LIMITS = DecodeLimits(max_tensor_bytes=1 << 20)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(DTYPES)
    shape = draw(SHAPES)
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * draw(st.floats(1e-3, 1e3))).to(dtype)
    return torch.randint(0, 100, shape, generator=gen, dtype=dtype)


@given(tensors(), LOSSLESS)
def test_lossless_round_trip_is_exact(x: torch.Tensor, codec: str) -> None:
    y = decode_tensor(encode_tensor(x, "x", CodecSpec.parse(codec)), LIMITS)
    assert y.dtype == x.dtype and y.shape == x.shape and torch.equal(x, y)


@given(tensors(), CODECS)
def test_every_codec_keeps_dtype_and_shape(x: torch.Tensor, codec: str) -> None:
    y = decode_tensor(encode_tensor(x, "x", CodecSpec.parse(codec)), LIMITS)
    assert y.dtype == x.dtype and y.shape == x.shape


@given(tensors(), CODECS, st.integers(1, 64))
def test_chunked_stream_reassembles_exactly(x: torch.Tensor, codec: str, chunk: int) -> None:
    message = encode_tensor(x, "x", CodecSpec.parse(codec))
    assembler = TensorAssembler(LIMITS)
    complete = [c for item in split_tensor(message, chunk) if (c := assembler.add(item)) is not None]
    assembler.finish()
    assert len(complete) == 1 and complete[0] == message


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.binary(max_size=512))
def test_random_bytes_as_a_message_never_crash(data: bytes) -> None:
    try:
        message = tensor_pb2.Tensor.FromString(data)
    except Exception:
        return
    with contextlib.suppress(DecodeError):
        decode_tensor(message, LIMITS)


@settings(max_examples=300)
@given(
    st.sampled_from(["lz4", "zstd", "none", "int8+lz4", "fp16+zstd"]),
    st.binary(max_size=256),
    st.lists(st.integers(-5, 70), max_size=4),
    st.integers(0, 12),
)
def test_garbage_payload_and_shape_raise_only_decode_error(
    codec: str, payload: bytes, shape: list[int], dtype: int
) -> None:
    message = encode_tensor(torch.ones(2, 2), "g", CodecSpec.parse(codec))
    message.payload = payload
    message.payload_size_bytes = len(payload)
    message.dtype = dtype
    del message.shape[:]
    message.shape.extend(shape)
    with contextlib.suppress(DecodeError):
        decode_tensor(message, LIMITS)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4096), st.binary(max_size=64)), max_size=8))
def test_mutated_chunk_streams_raise_only_decode_error(ops: list[tuple[int, int, bytes]]) -> None:
    assembler = TensorAssembler(LIMITS)
    head = encode_tensor(torch.zeros(8, 8), "t")
    head.payload = head.payload[:16]
    try:
        assembler.add(head)
        for kind, offset, data in ops:
            if kind == 0:
                assembler.add(tensor_pb2.TensorChunk(name="t", offset=offset, data=data))
            elif kind == 1:
                assembler.add(tensor_pb2.TensorChunk(name="other", offset=offset, data=data))
            else:
                assembler.add(tensor_pb2.TensorChunk(name="t", offset=16, data=data))
        assembler.finish()
    except DecodeError:
        pass
