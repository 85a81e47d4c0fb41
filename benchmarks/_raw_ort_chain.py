"""The transport floor of an onnxruntime chain: a hand-rolled gRPC server passing raw float32 bytes (no
protobuf, no codecs, no splitinfer request path) that runs one partition artifact on onnxruntime exactly as
a node loads it (``load_partition``, one thread), then forwards the result to ``--next`` and relays the
answer, or returns it. benchmarks/_raw_chain.py is the same floor with the interpreter; this one lets
``benchmarks/runtimes.py --pipeline`` subtract the same compute from both paths.

    python benchmarks/_raw_ort_chain.py --port-file F --artifact DIR [--next ADDR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _raw_chain import serve_chain  # benchmarks/ is on the path of a script run from there

from splitinfer.runtime import load_partition


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--next")
    args = parser.parse_args()
    torch.set_num_threads(1)
    part = load_partition(args.artifact)
    if part.runtime != "onnxruntime":
        raise SystemExit(f"{args.artifact} runs on the interpreter: {part.fallback_reason}")
    spec = part.inputs[0]
    out_name = part.outputs[0].name

    def run(request: bytes) -> bytes:
        x = torch.empty(spec.shape, dtype=spec.dtype)  # aligned, as the fastest decoder would do
        x.reshape(-1).view(torch.uint8).numpy()[:] = np.frombuffer(request, dtype=np.uint8)
        return part.run({spec.name: x})[out_name].contiguous().numpy().tobytes()

    serve_chain(args.port_file, run, args.next)


if __name__ == "__main__":
    main()
