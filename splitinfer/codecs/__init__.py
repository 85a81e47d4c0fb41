"""The tensor wire format: tensors to ``splitinfer.v1.Tensor`` messages and back, with codecs.

Public surface::

    from splitinfer.codecs import CodecSpec, encode_tensor, decode_tensor      # torch tensors
    msg = encode_tensor(x, "features", CodecSpec.parse("int8+zstd"))
    y = decode_tensor(msg)

    from splitinfer.codecs.arrays import encode_array, decode_array          # numpy arrays, no torch

Pure: no gRPC here. Decoding untrusted messages raises :class:`DecodeError` and nothing else. Names load on
first use, so that the torch-free agent can import the numpy codecs without the torch ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from splitinfer.codecs.arrays import decode_array, encode_array
    from splitinfer.codecs.chunks import (
        DEFAULT_CHUNK_BYTES,
        ChunkAssembler,
        TensorAssembler,
        WireTensor,
        split_tensor,
        split_wire,
    )
    from splitinfer.codecs.errors import DecodeError, EncodeError
    from splitinfer.codecs.spec import CodecSpec
    from splitinfer.codecs.wire import (
        DEFAULT_LIMITS,
        DecodeLimits,
        decode_tensor,
        decode_wire,
        encode_tensor,
        encode_wire,
        tensor_nbytes,
    )

_WHERE = {
    "DEFAULT_CHUNK_BYTES": "chunks",
    "ChunkAssembler": "chunks",
    "TensorAssembler": "chunks",
    "WireTensor": "chunks",
    "split_tensor": "chunks",
    "split_wire": "chunks",
    "DecodeError": "errors",
    "EncodeError": "errors",
    "CodecSpec": "spec",
    "DEFAULT_LIMITS": "wire",
    "DecodeLimits": "wire",
    "decode_tensor": "wire",
    "decode_wire": "wire",
    "encode_tensor": "wire",
    "encode_wire": "wire",
    "tensor_nbytes": "wire",
    "decode_array": "arrays",
    "encode_array": "arrays",
}

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_LIMITS",
    "ChunkAssembler",
    "CodecSpec",
    "DecodeError",
    "DecodeLimits",
    "EncodeError",
    "TensorAssembler",
    "WireTensor",
    "decode_array",
    "decode_tensor",
    "decode_wire",
    "encode_array",
    "encode_tensor",
    "encode_wire",
    "split_tensor",
    "split_wire",
    "tensor_nbytes",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'splitinfer.codecs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"splitinfer.codecs.{module}"), name)
