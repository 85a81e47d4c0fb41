"""The tensor wire format: torch tensors to ``splitinfer.v1.Tensor`` messages and back, with codecs.

Public surface::

    from splitinfer.codecs import CodecSpec, encode_tensor, decode_tensor
    msg = encode_tensor(x, "features", CodecSpec.parse("int8+zstd"))
    y = decode_tensor(msg)

Pure: no gRPC here. Decoding untrusted messages raises :class:`DecodeError` and nothing else.
"""

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
    "decode_tensor",
    "decode_wire",
    "encode_tensor",
    "encode_wire",
    "split_tensor",
    "split_wire",
    "tensor_nbytes",
]
