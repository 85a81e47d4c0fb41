"""Codec throughput and compression ratio on realistic activations, next to raw lz4/zstd on the same bytes.

Activations are post-ReLU feature maps from a conv + batch-norm + ReLU layer (about half the values are 0,
as after ReLU in a trained CNN). For each codec: encode and decode throughput in GB/s of the *original*
tensor bytes, and the compression ratio (original bytes / payload bytes). The "raw" rows compress the
same float32 bytes with the libraries directly, to show what the wire format adds.

    python benchmarks/codecs.py --out benchmarks/results/codecs.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import lz4.block
import torch
import zstandard
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, median, time_call, write_json

from splitinfer.codecs import CodecSpec, decode_tensor, encode_tensor

CODECS = [
    "none",
    "lz4",
    "zstd",
    "zstd:1",
    "fp16",
    "fp16+lz4",
    "bf16+zstd",
    "int8",
    "int8+lz4",
    "int8+zstd",
    "int8c+zstd",
]


def activations(shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(0)
    channels_in = 3 if shape[1] <= 64 else shape[1] // 2
    layer = torch.nn.Sequential(
        torch.nn.Conv2d(channels_in, shape[1], 3, padding=1), torch.nn.BatchNorm2d(shape[1]), torch.nn.ReLU()
    ).eval()
    with torch.no_grad():
        return layer(torch.randn(shape[0], channels_in, shape[2], shape[3]))


def bench_shape(shape: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
    x = activations(shape)
    nbytes = x.numel() * x.element_size()
    rows = []
    for text in CODECS:
        codec = CodecSpec.parse(text)
        message = encode_tensor(x, "a", codec)
        enc = time_call(lambda codec=codec: encode_tensor(x, "a", codec), repeats)
        dec = time_call(lambda message=message: decode_tensor(message), repeats)
        y = decode_tensor(message)
        rows.append(
            {
                "codec": str(codec),
                "shape": list(shape),
                "bytes": nbytes,
                "payload_bytes": len(message.payload),
                "ratio": nbytes / max(1, len(message.payload)),
                "encode_gbps": nbytes / median(enc) / 1e9,
                "decode_gbps": nbytes / median(dec) / 1e9,
                "max_abs_error": float((y - x).abs().max()),
                "encode_s": enc,
                "decode_s": dec,
            }
        )
    raw = x.numpy().tobytes()
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    for name, compress, decompress in (
        (
            "raw lz4.block",
            lambda: lz4.block.compress(raw, store_size=False),
            lambda c: lz4.block.decompress(c, uncompressed_size=len(raw)),
        ),
        ("raw zstd:3", lambda: zc.compress(raw), lambda c: zd.decompress(c)),
    ):
        compressed = compress()
        enc = time_call(compress, repeats)
        dec = time_call(lambda compressed=compressed, decompress=decompress: decompress(compressed), repeats)
        rows.append(
            {
                "codec": name,
                "shape": list(shape),
                "bytes": nbytes,
                "payload_bytes": len(compressed),
                "ratio": nbytes / len(compressed),
                "encode_gbps": nbytes / median(enc) / 1e9,
                "decode_gbps": nbytes / median(dec) / 1e9,
                "max_abs_error": 0.0,
                "encode_s": enc,
                "decode_s": dec,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (CI smoke run)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/codecs.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = [(1, 16, 16, 16)] if args.quick else [(1, 64, 56, 56), (1, 256, 14, 14), (8, 128, 28, 28)]
    repeats = 3 if args.quick else args.repeats
    rows = [row for shape in shapes for row in bench_shape(shape, repeats)]
    write_json(
        args.out,
        {
            "benchmark": "codecs",
            "machine": machine_info(),
            "parameters": {"shapes": shapes, "repeats": repeats, "torch_threads": 1},
            "results": rows,
        },
    )
    table = Table(title="codecs on post-ReLU activations (1 thread)")
    for column in ("shape", "codec", "ratio", "encode GB/s", "decode GB/s", "max |err|"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            "x".join(map(str, row["shape"])),
            row["codec"],
            f"{row['ratio']:.2f}",
            f"{row['encode_gbps']:.2f}",
            f"{row['decode_gbps']:.2f}",
            f"{row['max_abs_error']:.1e}",
        )
    Console(width=120).print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
