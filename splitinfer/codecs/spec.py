"""A codec choice as typed, printable data: a lossy step then a lossless step."""

from __future__ import annotations

from dataclasses import dataclass

from splitinfer.errors import InvalidArgument
from splitinfer.v1 import tensor_pb2

__all__ = ["CodecSpec"]

LossyCodec = tensor_pb2.LossyCodec
LosslessCodec = tensor_pb2.LosslessCodec

_LOSSY_NAMES: dict[str, LossyCodec] = {
    "none": tensor_pb2.LOSSY_CODEC_NONE,
    "fp16": tensor_pb2.LOSSY_CODEC_FP16,
    "bf16": tensor_pb2.LOSSY_CODEC_BF16,
    "int8": tensor_pb2.LOSSY_CODEC_INT8_AFFINE,
    "int8c": tensor_pb2.LOSSY_CODEC_INT8_PER_CHANNEL,
}
_LOSSLESS_NAMES: dict[str, LosslessCodec] = {
    "none": tensor_pb2.LOSSLESS_CODEC_NONE,
    "lz4": tensor_pb2.LOSSLESS_CODEC_LZ4,
    "zstd": tensor_pb2.LOSSLESS_CODEC_ZSTD,
}
_LOSSY_BY_VALUE = {v: k for k, v in _LOSSY_NAMES.items()}
_LOSSLESS_BY_VALUE = {v: k for k, v in _LOSSLESS_NAMES.items()}
DEFAULT_ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """How to encode one tensor: ``lossy`` step, then ``lossless`` step at ``level``.

    The printed form is what :meth:`parse` reads: ``"none"``, ``"fp16"``, ``"int8+lz4"``,
    ``"bf16+zstd:9"``, ``"int8c+zstd"`` (per-channel int8), ``"zstd"`` (lossless only).
    """

    lossy: LossyCodec = tensor_pb2.LOSSY_CODEC_NONE
    lossless: LosslessCodec = tensor_pb2.LOSSLESS_CODEC_NONE
    level: int = 0

    def __post_init__(self) -> None:
        if self.lossy not in _LOSSY_BY_VALUE:
            raise InvalidArgument(f"unknown lossy codec value {self.lossy}")
        if self.lossless not in _LOSSLESS_BY_VALUE:
            raise InvalidArgument(f"unknown lossless codec value {self.lossless}")
        if self.lossless == tensor_pb2.LOSSLESS_CODEC_ZSTD and not (-7 <= self.level <= 22):
            raise InvalidArgument(f"zstd level must be in [-7, 22], got {self.level}")

    @property
    def is_lossy(self) -> bool:
        return self.lossy != tensor_pb2.LOSSY_CODEC_NONE

    @property
    def is_plain(self) -> bool:
        """Neither step changes the bytes: encoding is a view of the tensor, decoding one copy."""
        return self.lossy == tensor_pb2.LOSSY_CODEC_NONE and self.lossless == tensor_pb2.LOSSLESS_CODEC_NONE

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """Reads the printed form; InvalidArgument says what was not understood."""
        parts = [p.strip() for p in text.strip().lower().split("+")]
        if len(parts) > 2 or not all(parts):
            raise InvalidArgument(f"codec {text!r}: expected LOSSY, LOSSLESS[:LEVEL] or LOSSY+LOSSLESS[:LEVEL]")
        if len(parts) == 1:
            name = parts[0].partition(":")[0]
            if name in _LOSSY_NAMES and name not in _LOSSLESS_NAMES:
                return cls(_LOSSY_NAMES[name])
            parts = ["none", parts[0]]
        lossy_name, (lossless_name, _, level_text) = parts[0], parts[1].partition(":")
        if lossy_name not in _LOSSY_NAMES:
            raise InvalidArgument(f"codec {text!r}: unknown lossy step {lossy_name!r}; known: {sorted(_LOSSY_NAMES)}")
        if lossless_name not in _LOSSLESS_NAMES:
            raise InvalidArgument(
                f"codec {text!r}: unknown lossless step {lossless_name!r}; known: {sorted(_LOSSLESS_NAMES)}"
            )
        lossless = _LOSSLESS_NAMES[lossless_name]
        level = DEFAULT_ZSTD_LEVEL if lossless == tensor_pb2.LOSSLESS_CODEC_ZSTD else 0
        if level_text:
            try:
                level = int(level_text)
            except ValueError:
                raise InvalidArgument(f"codec {text!r}: level {level_text!r} is not an integer") from None
        lossy = _LOSSY_NAMES[lossy_name]
        return cls(lossy, lossless, level)

    def __str__(self) -> str:
        lossless = _LOSSLESS_BY_VALUE[self.lossless]
        if self.lossless == tensor_pb2.LOSSLESS_CODEC_ZSTD and self.level != DEFAULT_ZSTD_LEVEL:
            lossless = f"{lossless}:{self.level}"
        if not self.is_lossy:
            return lossless
        lossy = _LOSSY_BY_VALUE[self.lossy]
        return lossy if lossless == "none" else f"{lossy}+{lossless}"

    @classmethod
    def from_proto(cls, encoding: tensor_pb2.Encoding) -> CodecSpec:
        """The codec an Encoding message names (UNSPECIFIED reads as NONE)."""
        return cls(
            encoding.lossy or tensor_pb2.LOSSY_CODEC_NONE,
            encoding.lossless or tensor_pb2.LOSSLESS_CODEC_NONE,
            encoding.level,
        )

    def to_proto(self) -> tensor_pb2.Encoding:
        return tensor_pb2.Encoding(lossy=self.lossy, lossless=self.lossless, level=self.level)
