"""Detection accuracy per variant and codec: the zoo's detector, trained in seconds on the synthetic
detection set, divided after its stem (the tensor a device would send), evaluated with COCO-style mAP
(pycocotools) on a held-out synthetic set for every variant (fp32, fp16, bf16, int8) and every codec on the
crossing tensor; post-processing (decode + NMS) runs outside the programs, as it does when served.

    python benchmarks/detection.py --out benchmarks/results/detection.json
    python benchmarks/detection.py --quick --out benchmarks/results/detection-quick.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_json

from splitinfer.codecs import CodecSpec, decode_tensor, encode_tensor
from splitinfer.detection import CLASSES, decode_nms, mean_average_precision, synthetic_detection_set, train_detector
from splitinfer.program import CompiledProgram, Program
from splitinfer.variants import VARIANT_KINDS, make_variant
from splitinfer.zoo.detector import detector

CODECS = ("none", "fp16", "bf16", "int8c+zstd", "int8+zstd")


def _stem_cut(program: Program, batch: int) -> str:
    """The stem's output: the first ReLU producing [batch, 32, 16, 16] (what a device head sends)."""
    for node in program.nodes:
        out = node.outputs[0] if node.outputs else None
        if node.op == "aten.relu.default" and out is not None and out.shape == (batch, 32, 16, 16):
            return node.name
    raise RuntimeError("no stem output found in the program")


def evaluate(
    model: torch.nn.Module, images: torch.Tensor, truth: Any, batch: int, kinds: list[str]
) -> list[dict[str, Any]]:
    rows = []
    params = dict(model.postprocess.params)  # type: ignore[union-attr]
    params["score_threshold"] = 0.05  # mAP integrates over scores: keep the low ones the demo threshold drops
    example = (images[:batch],)
    for kind in kinds:
        program = make_variant(model, example, kind)
        cut = _stem_cut(program, batch)
        name = program.input_names[0]
        head = CompiledProgram(program.subprogram([name], [cut]))
        tail = CompiledProgram(program.subprogram([cut], program.output_names))
        crossings = [head({name: images[i : i + batch]})[cut] for i in range(0, len(images), batch)]
        for codec_name in CODECS:
            codec = CodecSpec.parse(codec_name)
            predictions = []
            payload = 0
            for x in crossings:
                message = encode_tensor(x, cut, codec)
                payload += len(message.payload)
                out = tail({cut: decode_tensor(message)})
                predictions += decode_nms(out["class_logits"], out["box_deltas"], params)
            score = mean_average_precision(predictions, truth.boxes, truth.labels, CLASSES)
            rows.append(
                {
                    "variant": kind,
                    "codec": codec_name,
                    "map": score.map,
                    "map_50": score.map_50,
                    "crossing_bytes_per_image": payload / len(images),
                    "param_bytes": program.param_bytes,
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short training and a small evaluation set")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/detection.json"))
    args = parser.parse_args()
    steps, eval_images, train_images = (40, 20, 128) if args.quick else (args.steps, args.eval_images, 768)
    batch = 10 if args.quick else 25
    torch.manual_seed(0)
    model, _ = detector()
    start = time.perf_counter()
    train_set = synthetic_detection_set(train_images, seed=1000)
    report = train_detector(model, train_set, steps=steps)
    train_s = time.perf_counter() - start
    truth = synthetic_detection_set(eval_images, seed=7)
    rows = evaluate(model, truth.images, truth, batch, list(VARIANT_KINDS))
    write_json(
        args.out,
        {
            "benchmark": "detection",
            "machine": machine_info(),
            "parameters": {
                "train_images": train_images, "train_steps": steps, "eval_images": eval_images,
                "eval_seed": 7, "train_seed": 1000, "torch_threads": torch.get_num_threads(),
            },
            "training": {"seconds": train_s, "final_loss": report.final_loss},
            "results": rows,
        },
    )  # fmt: skip
    table = Table(title=f"detector mAP on {eval_images} synthetic images (trained {steps} steps in {train_s:.0f} s)")
    for column in ("variant", "codec", "mAP .50:.95", "mAP@.5", "bytes/image"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["variant"], r["codec"], f"{r['map']:.3f}", f"{r['map_50']:.3f}", f"{r['crossing_bytes_per_image']:.0f}"
        )
    Console(width=120).print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
