"""The transport floor of an onnxruntime chain: a hand-rolled gRPC server passing raw float32 bytes (no
protobuf, no codecs, no splitinfer request path) that runs one partition artifact on onnxruntime exactly as
a node loads it (``load_partition``, one thread), then forwards the result to ``--next`` and relays the
answer, or returns it. benchmarks/_raw_chain.py is the same floor with the interpreter; this one lets
``benchmarks/runtimes.py --pipeline`` subtract the same compute from both paths.

    python benchmarks/_raw_ort_chain.py --port-file F --artifact DIR [--next ADDR]
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import torch

from splitinfer.runtime import load_partition

METHOD = "/raw.Chain/Call"
OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


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
    call_next = None
    if args.next:
        channel = grpc.insecure_channel(args.next, options=OPTIONS)
        call_next = channel.unary_unary(METHOD)

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        x = torch.empty(spec.shape, dtype=spec.dtype)  # aligned, as the fastest decoder would do
        x.reshape(-1).view(torch.uint8).numpy()[:] = np.frombuffer(request, dtype=np.uint8)
        data = part.run({spec.name: x})[out_name].contiguous().numpy().tobytes()
        return call_next(data) if call_next else data

    handler = grpc.method_handlers_generic_handler("raw.Chain", {"Call": grpc.unary_unary_rpc_method_handler(handle)})
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    args.port_file.write_text(str(port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1)


if __name__ == "__main__":
    main()
