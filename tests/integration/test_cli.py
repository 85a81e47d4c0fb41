"""The command line, as an operator runs it: divide into a pool, list, show, draw."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from splitinfer.pool import ModelPool


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "splitinfer.cli", *args], capture_output=True, text=True, timeout=300)


def test_divide_list_show_and_picture(tmp_path: Path) -> None:
    capacities = tmp_path / "capacities.json"
    capacities.write_text(
        json.dumps(
            {
                "servers": [
                    {"name": "edge", "flops": 2e9, "memory_bytes": 300_000},
                    {"name": "cloud", "flops": 2e10, "memory_bytes": 10**9},
                ],
                "devices": [
                    {"name": "phone", "flops": 1e8, "memory_bytes": 24_000, "uplink_mbps": 1.1, "request_rate": 5}
                ],
            }
        )
    )
    pool = tmp_path / "pool"
    picture = tmp_path / "division.svg"
    result = _cli(
        "divide", "splitinfer.zoo:residual_cnn", "--pool", str(pool), "--variants", "fp32,int8",
        "--capacities", str(capacities), "--accuracy", "fp32=0.8", "--task", "image-classification-32",
        "--picture", str(picture),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "residual_cnn@fp32" in result.stdout and "residual_cnn@int8" in result.stdout
    assert "device head cuts" in result.stdout
    assert picture.read_text().lstrip().startswith("<?xml") and "cluster_p0" in picture.read_text()
    listing = _cli("pool", "list", "--pool", str(pool))
    assert listing.returncode == 0 and "0.800 (declared)" in listing.stdout and "int8" in listing.stdout
    shown = _cli("pool", "show", "residual_cnn", "--pool", str(pool), "--variant", "int8")
    assert shown.returncode == 0 and "p0" in shown.stdout and "edge" in shown.stdout and "cloud" in shown.stdout
    missing = _cli("pool", "show", "nope", "--pool", str(pool))
    assert missing.returncode == 1 and "no model" in missing.stdout


def test_bad_factory_is_a_clear_error(tmp_path: Path) -> None:
    result = _cli("divide", "splitinfer.zoo:nope", "--pool", str(tmp_path))
    assert result.returncode == 2 and "cannot load factory" in result.stdout


def test_divide_a_detector_with_its_stage_and_a_live_tensor_bound(tmp_path: Path) -> None:
    capacities = tmp_path / "capacities.json"
    servers = [{"name": n, "flops": 1e9, "memory_bytes": 10**9} for n in ("edge", "metro", "cloud")]
    capacities.write_text(json.dumps({"servers": servers}))
    pool, picture = tmp_path / "pool", tmp_path / "detector.dot"
    result = _cli(
        "divide", "splitinfer.zoo.detector:detector", "--pool", str(pool), "--capacities", str(capacities),
        "--max-live-tensors", "1", "--no-onnx", "--picture", str(picture),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "then detection.decode_nms on the last place" in result.stdout
    assert "cuts of at most 1 live tensors (partitions by bound: <=1: 3)" in result.stdout
    dot = picture.read_text()
    assert "post-processing: detection.decode_nms" in dot and "p2 on cloud" in dot
    stored = ModelPool(pool)
    stage = stored.division(stored.resolve("detector", "fp32", "default")).postprocess
    assert (
        stage is not None and stage.stage == "detection.decode_nms" and stage.outputs == ("boxes", "scores", "labels")
    )
    ops = _cli(
        "divide", "splitinfer.zoo.detector:detector", "--pool", str(pool), "--capacities", str(capacities),
        "--no-onnx", "--picture", str(tmp_path / "ops.dot"), "--picture-ops", "--name", "detector-ops",
    )  # fmt: skip
    op_level = (tmp_path / "ops.dot").read_text()
    assert ops.returncode == 0 and 'label="conv2d\\n' in op_level  # one box per operation
    assert op_level.count("->") > dot.count("->") * 5
    bad = _cli("divide", "splitinfer.zoo.detector:detector", "--pool", str(pool), "--max-live-tensors", "zero")
    assert bad.returncode == 2 and "not a number or 'auto'" in bad.stdout
