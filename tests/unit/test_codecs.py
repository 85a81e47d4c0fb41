"""Wire format and codecs: every dtype x codec, shapes, and every malformed-input case."""

from __future__ import annotations

import itertools

import lz4.block
import pytest
import torch
import zstandard

from splitinfer.codecs import CodecSpec, DecodeError, DecodeLimits, EncodeError, decode_tensor, encode_tensor
from splitinfer.errors import InvalidArgument
from splitinfer.v1 import tensor_pb2

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
]
CODECS = [
    "none",
    "lz4",
    "zstd",
    "zstd:19",
    "fp16",
    "bf16",
    "int8",
    "int8c",
    "fp16+lz4",
    "bf16+zstd",
    "int8+zstd",
    "int8c+lz4",
]
SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3, 4, 5)]


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 3).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, shape, generator=gen, dtype=dtype)


def _tolerance(codec: CodecSpec, x: torch.Tensor) -> float:
    """Largest error a codec may introduce on x."""
    span = float(x.abs().max()) if x.numel() else 0.0
    lossy = codec.lossy
    if lossy in (tensor_pb2.LOSSY_CODEC_INT8_AFFINE, tensor_pb2.LOSSY_CODEC_INT8_PER_CHANNEL):
        return 2 * span / 255 + 1e-6  # one quantisation step of the (0-including) range
    if lossy == tensor_pb2.LOSSY_CODEC_BF16 or x.dtype == torch.bfloat16:
        return span * 2**-7
    if lossy == tensor_pb2.LOSSY_CODEC_FP16 or x.dtype == torch.float16:
        return span * 2**-10
    return 0.0


@pytest.mark.parametrize(("dtype", "codec_text"), list(itertools.product(DTYPES, CODECS)))
def test_every_dtype_and_codec_round_trips(dtype: torch.dtype, codec_text: str) -> None:
    codec = CodecSpec.parse(codec_text)
    for shape in SHAPES:
        x = _sample(dtype, shape)
        message = encode_tensor(x, "t", codec)
        # The message must survive serialisation: what travels is bytes.
        y = decode_tensor(tensor_pb2.Tensor.FromString(message.SerializeToString()))
        assert y.dtype == x.dtype and y.shape == x.shape
        if not dtype.is_floating_point:
            assert message.encoding.lossy == tensor_pb2.LOSSY_CODEC_NONE  # never lossy for non-floats
            assert torch.equal(x, y)
        else:
            err = float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
            assert err <= _tolerance(codec, x), (shape, err)


def test_lossless_codecs_are_bit_exact_for_floats_with_nan_and_inf() -> None:
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40])
    for codec in ("none", "lz4", "zstd"):
        y = decode_tensor(encode_tensor(x, "x", CodecSpec.parse(codec)))
        assert torch.equal(x.view(torch.int32), y.view(torch.int32))


def test_non_contiguous_and_grad_tensors_are_accepted() -> None:
    base = torch.arange(24, dtype=torch.float32, requires_grad=True).reshape(4, 6)
    x = base.t()[1:, ::2]
    assert not x.is_contiguous()
    y = decode_tensor(encode_tensor(x, "x", CodecSpec.parse("lz4")))
    assert torch.equal(y, x.detach())
    z = decode_tensor(encode_tensor(torch.arange(8.0).expand(3, 8), "e", CodecSpec.parse("int8c")))
    assert torch.allclose(z, torch.arange(8.0).expand(3, 8), atol=8 / 255)


def test_compression_shrinks_relu_activations() -> None:
    x = torch.relu(torch.randn(1, 64, 28, 28))
    raw = len(encode_tensor(x, "a").payload)
    assert len(encode_tensor(x, "a", CodecSpec.parse("lz4")).payload) < raw
    assert len(encode_tensor(x, "a", CodecSpec.parse("int8+zstd")).payload) < raw / 4


def test_int8_keeps_zero_exact() -> None:
    x = torch.relu(torch.randn(4, 8, 5, 5))
    for codec in ("int8", "int8c"):
        y = decode_tensor(encode_tensor(x, "x", CodecSpec.parse(codec)))
        assert torch.all(y[x == 0] == 0)


def test_int8_refuses_non_finite_values() -> None:
    with pytest.raises(EncodeError, match="finite"):
        encode_tensor(torch.tensor([1.0, float("nan")]), "x", CodecSpec.parse("int8"))


def test_unsupported_dtype_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="cannot travel"):
        encode_tensor(torch.zeros(2, dtype=torch.complex64), "c")


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("none", "none"),
        ("LZ4", "lz4"),
        ("zstd", "zstd"),
        ("zstd:9", "zstd:9"),
        ("fp16+lz4", "fp16+lz4"),
        ("int8c+zstd:3", "int8c+zstd"),
        ("none+none", "none"),
        ("bf16+none", "bf16"),
    ],
)
def test_codec_spec_parses_and_prints(text: str, printed: str) -> None:
    spec = CodecSpec.parse(text)
    assert str(spec) == printed
    assert CodecSpec.parse(str(spec)) == spec
    assert CodecSpec.from_proto(spec.to_proto()) == spec


@pytest.mark.parametrize("text", ["", "gzip", "int8+int8", "lz4+zstd", "zstd:x", "zstd:99", "a+b+c", "+lz4"])
def test_codec_spec_rejects_nonsense(text: str) -> None:
    with pytest.raises(InvalidArgument):
        CodecSpec.parse(text)


# --- malformed input: each case raises one DecodeError with a message that says what was wrong ---------------


def _good(codec: str = "none", shape: tuple[int, ...] = (4, 4)) -> tensor_pb2.Tensor:
    return encode_tensor(torch.relu(torch.randn(shape)), "bad", CodecSpec.parse(codec))


def _with(message: tensor_pb2.Tensor, **changes: object) -> tensor_pb2.Tensor:
    copy = tensor_pb2.Tensor()
    copy.CopyFrom(message)
    for field, value in changes.items():
        if field == "shape":
            del copy.shape[:]
            copy.shape.extend(value)  # type: ignore[call-overload]
        else:
            setattr(copy, field, value)
    return copy


def test_declared_size_vs_payload_mismatch() -> None:
    m = _good()
    with pytest.raises(DecodeError, match="payload_size_bytes declares"):
        decode_tensor(_with(m, payload_size_bytes=m.payload_size_bytes + 1))


def test_payload_not_matching_shape() -> None:
    m = _good()
    short = _with(m, payload=m.payload[:-4], payload_size_bytes=len(m.payload) - 4)
    with pytest.raises(DecodeError, match="imply"):
        decode_tensor(short)


def test_unspecified_and_unknown_dtype() -> None:
    with pytest.raises(DecodeError, match="unsupported tensor dtype DATA_TYPE_UNSPECIFIED"):
        decode_tensor(_with(_good(), dtype=0))
    with pytest.raises(DecodeError, match="unknown value 99"):
        decode_tensor(_with(_good(), dtype=99))


def test_unknown_codecs() -> None:
    m = _good()
    m.encoding.lossless = 42
    with pytest.raises(DecodeError, match="unknown lossless codec"):
        decode_tensor(m)
    m = _good()
    m.encoding.lossy = 42
    with pytest.raises(DecodeError, match="unknown lossy codec"):
        decode_tensor(m)


def test_lossy_codec_on_integer_tensor() -> None:
    m = encode_tensor(torch.arange(4, dtype=torch.int32), "i")
    m.encoding.lossy = tensor_pb2.LOSSY_CODEC_FP16
    with pytest.raises(DecodeError, match="floating-point"):
        decode_tensor(m)


def test_negative_dimension() -> None:
    with pytest.raises(DecodeError, match="negative dimension"):
        decode_tensor(_with(_good(), shape=[-4, -4]))


def test_element_count_overflow_is_refused_before_allocating() -> None:
    huge = [2**62, 2**62, 2**62]
    with pytest.raises(DecodeError, match="over the limit"):
        decode_tensor(_with(_good(), shape=huge))
    with pytest.raises(DecodeError, match="over the limit"):
        decode_tensor(_with(_good(), shape=[4, 4]), DecodeLimits(max_tensor_bytes=32))


def test_rank_limit() -> None:
    with pytest.raises(DecodeError, match="rank"):
        decode_tensor(_with(_good(), shape=[1] * 40))


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_truncated_compressed_data(codec: str) -> None:
    m = _good(codec, (64, 64))
    cut = _with(m, payload=m.payload[: len(m.payload) // 2], payload_size_bytes=len(m.payload) // 2)
    with pytest.raises(DecodeError):
        decode_tensor(cut)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_corrupt_compressed_data(codec: str) -> None:
    m = _good(codec, (64, 64))
    corrupt = bytes(b ^ 0x5A for b in m.payload)
    with pytest.raises(DecodeError):
        decode_tensor(_with(m, payload=corrupt))


def test_zstd_bomb_with_lying_frame_header_is_refused() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(200 << 20))  # 200 MiB of zeros in a few KiB
    m = _with(_good("zstd", (2, 2)), payload=bomb, payload_size_bytes=len(bomb))
    with pytest.raises(DecodeError, match="declares"):
        decode_tensor(m)


def test_zstd_bomb_without_content_size_is_cut_at_the_declared_size() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(50 << 20))
    m = _with(_good("zstd", (2, 2)), payload=bomb, payload_size_bytes=len(bomb))
    with pytest.raises(DecodeError, match="zstd"):
        decode_tensor(m)


def test_lz4_bomb_is_refused() -> None:
    bomb = lz4.block.compress(bytes(50 << 20), store_size=False)
    m = _with(_good("lz4", (2, 2)), payload=bomb, payload_size_bytes=len(bomb))
    with pytest.raises(DecodeError, match="lz4"):
        decode_tensor(m)


def test_bad_quantisation_parameters() -> None:
    m = _good("int8")
    m.encoding.scales[0] = -1.0
    with pytest.raises(DecodeError, match="positive"):
        decode_tensor(m)
    m = _good("int8")
    m.encoding.zero_points[0] = 1000
    with pytest.raises(DecodeError, match="zero points"):
        decode_tensor(m)
    m = _good("int8c")
    del m.encoding.scales[0]
    with pytest.raises(DecodeError, match="scale"):
        decode_tensor(m)
    m = _good("int8c")
    m.encoding.channel_axis = 5
    with pytest.raises(DecodeError, match="axis"):
        decode_tensor(m)
