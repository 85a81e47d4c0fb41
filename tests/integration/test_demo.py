"""`make demo` runs the whole system and prints its phases, a summary, a plot and the results database."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "splitinfer.cli", "demo", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for phase in ("phase Wi-Fi", "phase 4G", "phase 3G", "phase CAT1", "summary", "results database"):
        assert phase in result.stdout, phase
    assert (tmp_path / "demo-phases.png").stat().st_size > 10_000
    assert (tmp_path / "results.db").exists()
    # The digits CNN's accuracy is measured, and the plan moves with the network for the ResNet on the phone.
    assert "measured accuracy" in result.stdout
    # One result row per phase (the per-request prediction lines read "phone  resnet18 #n: predicted ...").
    phone_resnet = [
        line for line in result.stdout.splitlines() if re.match(r"\s*phone\s+resnet18\s+[\d.]+ ms \(", line)
    ]
    assert len(phone_resnet) == 4, phone_resnet
    assert "prediction error per phase" in result.stdout
    # The live re-division phase: the population shifts and the division follows.
    assert "phase re-division" in result.stdout and "re-divided live, the phones got faster" in result.stdout
