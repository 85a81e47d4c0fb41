"""The numpy codecs (the torch-free agent's) write and read exactly the wire messages the torch codecs do,
for every dtype, shape and codec; they refuse what the torch decoder refuses; and they import without torch."""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from splitinfer.codecs import CodecSpec, DecodeError, DecodeLimits, EncodeError, decode_tensor, encode_tensor
from splitinfer.codecs.arrays import decode_array, encode_array
from splitinfer.v1 import tensor_pb2

CODECS = st.sampled_from(["none", "lz4", "zstd:3", "fp16", "bf16", "bf16+lz4", "int8", "int8+zstd", "int8c"])
DTYPES = st.sampled_from(
    [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.uint8, torch.bool]
)
SHAPES = array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=DTYPES, shape=SHAPES, codec=CODECS, scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 99))
def test_numpy_and_torch_codecs_agree_byte_for_byte(
    dtype: torch.dtype, shape: tuple[int, ...], codec: str, scale: float, seed: int
) -> None:
    torch.manual_seed(seed)
    tensor = (torch.randn(shape) * scale).to(dtype)
    spec = CodecSpec.parse(codec)
    from_torch = encode_tensor(tensor, "t", spec)
    from_numpy = encode_array(_numpy(tensor), "t", spec)
    assert from_numpy.SerializeToString() == from_torch.SerializeToString()
    by_numpy = decode_array(from_torch)
    by_torch = decode_tensor(from_numpy)
    assert by_numpy.dtype == _numpy(by_torch).dtype and by_numpy.shape == tuple(by_torch.shape)
    assert by_numpy.tobytes() == _numpy(by_torch).tobytes()


def test_numpy_decoder_refuses_what_the_torch_one_refuses() -> None:
    good = encode_array(np.ones((2, 3), np.float32), "x", CodecSpec.parse("int8+lz4"))
    broken = []
    for mutate in (
        lambda m: m.shape.append(-1),
        lambda m: setattr(m, "payload_size_bytes", m.payload_size_bytes + 1),
        lambda m: m.encoding.scales.append(1.0),
        lambda m: setattr(m, "dtype", 999),
        lambda m: setattr(m.encoding, "lossless", 99),
        lambda m: (setattr(m, "payload", b"\xff" * 40), setattr(m, "payload_size_bytes", 40)),
        lambda m: m.shape.extend([1] * 20),
    ):
        message = tensor_pb2.Tensor()
        message.CopyFrom(good)
        mutate(message)
        broken.append(message)
    for message in broken:
        with pytest.raises(DecodeError):
            decode_array(message)
        with pytest.raises(DecodeError):
            decode_tensor(message)
    with pytest.raises(DecodeError, match="exceeds"):
        decode_array(encode_array(np.ones(1000, np.float32)), DecodeLimits(max_tensor_bytes=100))
    with pytest.raises(EncodeError, match="finite"):
        encode_array(np.array([np.nan], np.float32), codec=CodecSpec.parse("int8"))
    with pytest.raises(EncodeError, match="cannot travel"):
        encode_array(np.ones(2, np.complex64))


def test_the_agent_run_path_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import splitinfer.codecs.arrays, splitinfer.runtime.ort, splitinfer.pool.store, edge_agent.runner\n"
        "import splitinfer.pool.manifest\n"
        "assert 'torch' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
