"""Writes docs/benchmarks.md from the JSON results of the last full run in benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(data: dict[str, Any]) -> str:
    m = data["machine"]
    v = m["versions"]
    return (
        f"{m['processor']}, {m['cpu_count']} cores, Python {m['python']}, torch {v['torch']}, "
        f"grpcio {v['grpcio']}; torch threads: {data['parameters'].get('torch_threads', 1)}"
    )


def codecs_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## Codecs (`benchmarks/codecs.py`)",
        "",
        "Post-ReLU activations of a conv + batch-norm + ReLU layer. Throughput is in GB/s of the original float32",
        "bytes; ratio is original bytes / payload bytes. The `raw` rows compress the same bytes with the",
        "libraries directly: the gap to them is what the wire format adds.",
        "",
        f"Machine: {_machine(data)}.",
        "",
        "| shape | codec | ratio | encode GB/s | decode GB/s | max abs error |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in data["results"]:
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {r['codec']} | {r['ratio']:.2f} | {r['encode_gbps']:.2f} | "
            f"{r['decode_gbps']:.2f} | {r['max_abs_error']:.1e} |"
        )
    return [*lines, ""]


def divider_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## Graph extraction and division (`benchmarks/divider.py`)",
        "",
        "Export (`torch.export` + conversion), FLOP measurement over the graph, and division over 8 servers",
        "with 3 active device classes; medians.",
        "",
        f"Machine: {_machine(data)}.",
        "",
        "| model | ops | narrow cuts | servers | partitions | export ms | graph ms | divide ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['model']} | {r['ops']} | {r['narrow_cuts']} | {r['servers']} | {r['partitions']} | "
            f"{r['export_ms']:.0f} | {r['graph_ms']:.0f} | {r['divide_ms']:.1f} |"
        )
    return [*lines, ""]


SECTIONS = {"codecs": codecs_section, "divider": divider_section}


def render(results: Path) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Tables of the last full run (`make bench`), written by `benchmarks/report.py` from",
        "`benchmarks/results/*.json`, which also hold the raw samples and the machine description.",
        "",
    ]
    for name, section in SECTIONS.items():
        data = _load(results, name)
        lines += section(data) if data else [f"## {name}", "", "Not run yet.", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    args.out.write_text(render(args.results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
