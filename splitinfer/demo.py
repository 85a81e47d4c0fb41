"""The walking-skeleton demo: a model split by hand, its head on this "device", its tail on a server node.

Run with ``splitinfer demo --skeleton`` (``make demo`` runs the whole system). It starts a real server node
process, loads the tail into it over gRPC, and for each codec runs the head locally, streams the
intermediate tensor, and checks the result against the whole model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edge_agent.client import NodeClient, SplitRunner
from server_node.process import spawn_node
from splitinfer.codecs import CodecSpec
from splitinfer.program import CompiledProgram, Program, export_program
from splitinfer.runtime import PartitionKey, save_partition_artifact
from splitinfer.zoo import build

__all__ = ["DEMO_CODECS", "LOSSY_TOLERANCE", "hand_split", "run_demo"]

DEMO_CODECS = ("none", "lz4", "zstd", "fp16+lz4", "bf16", "int8+zstd", "int8c+lz4")
#: Largest accepted |split - whole| on the logits for lossy codecs (relative to the logits' max magnitude).
LOSSY_TOLERANCE = 0.05


@dataclass(frozen=True)
class HandSplit:
    whole: Program
    head: Program
    tail: Program
    cut: str


def hand_split(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> HandSplit:
    """Exports the model and cuts it after its last max-pool, where the feature map is smallest."""
    whole = export_program(model, example)
    pools = [n.name for n in whole.nodes if n.op.startswith("aten.max_pool2d")]
    if not pools:
        raise ValueError("the demo model has no max-pool to cut after")
    cut = pools[-1]
    head = whole.subprogram(whole.input_names, [cut])
    tail = whole.subprogram([cut], whole.output_names)
    return HandSplit(whole, head, tail, cut)


def run_demo(console: Console | None = None, work_dir: Path | None = None) -> bool:
    """Runs the demo; returns True when every codec's output matched the whole model."""
    console = console or Console(width=120)
    model, example = build("tiny_cnn")
    split = hand_split(model, example)
    key = PartitionKey("tiny_cnn", "fp32", "tail")
    work = Path(tempfile.mkdtemp(prefix="splitinfer-demo-", dir=work_dir))
    manifest_sha = save_partition_artifact(split.tail, key, work / "tail")
    console.print(f"[bold]model[/] tiny_cnn: {len(split.whole.nodes)} ops, cut after [cyan]{split.cut}[/]")
    console.print(f"  device (this process) runs the head: {len(split.head.nodes)} ops -> {split.head.outputs[0]}")
    console.print(f"  server node runs the tail:           {len(split.tail.nodes)} ops -> {split.tail.outputs[0]}")

    node = spawn_node(["--torch-threads", "1"])
    ok = True
    try:
        with NodeClient(node.address) as client:
            client.load_partition(str(work / "tail"), key, manifest_sha)
            console.print(f"  server node at {node.address} loaded {key} (manifest sha256 {manifest_sha[:12]}...)")
            runner = SplitRunner(split.head, key, split.tail.output_names, client)
            x = {split.whole.input_names[0]: example[0]}
            with torch.no_grad():
                reference = model(example[0])
            whole_out = CompiledProgram(split.whole)(x)[split.whole.output_names[0]]
            if not torch.allclose(whole_out, reference, atol=1e-5):
                raise AssertionError("the exported program differs from the torch model")
            runner.infer(x)  # warm-up: first calls pay for connection set-up and lazy initialisation
            table = Table(title="split inference: head on device, tail on server node")
            for column in (
                "codec",
                "bytes sent",
                "head ms",
                "encode ms",
                "remote ms",
                "total ms",
                "max |err|",
                "ok",
            ):
                table.add_column(column, justify="right")
            for text in DEMO_CODECS:
                codec = CodecSpec.parse(text)
                result = runner.infer(x, codec)
                out = result.outputs[split.tail.output_names[0]]
                err = float((out - reference).abs().max())
                if codec.is_lossy:
                    good = err <= LOSSY_TOLERANCE * float(reference.abs().max())
                else:
                    good = torch.allclose(out, reference, atol=1e-5, rtol=1e-5)
                ok &= good
                table.add_row(
                    str(codec),
                    f"{result.bytes_sent:,}",
                    f"{result.head_ms:.2f}",
                    f"{result.encode_ms:.2f}",
                    f"{result.remote_ms:.2f}",
                    f"{result.total_ms:.2f}",
                    f"{err:.2e}",
                    "[green]yes[/]" if good else "[red]NO[/]",
                )
            console.print(table)
            step = result.timings[0]
            console.print(
                f"  last request on the node: queue {step.queue_ms:.2f} ms, decode {step.decode_ms:.2f} ms, "
                f"compute {step.compute_ms:.2f} ms, encode {step.encode_ms:.2f} ms"
            )
    finally:
        node.stop()
    console.print("[green]all outputs match the whole model[/]" if ok else "[red]some outputs differ[/]")
    return ok
