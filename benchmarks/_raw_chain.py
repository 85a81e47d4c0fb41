"""The floor for a chain: hand-rolled gRPC servers passing raw float32 bytes, no protobuf, no codecs.

Run by benchmarks/pipeline.py as separate processes:
    python benchmarks/_raw_chain.py --port-file F [--program DIR --next ADDR]
With --program the server runs that partition on the bytes it receives (shape from the program), then
either forwards the result to --next and relays the answer, or returns it. Without --program it echoes.
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

from splitinfer.program import CompiledProgram
from splitinfer.runtime import load_partition_artifact

METHOD = "/raw.Chain/Call"
OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--program", type=Path)
    parser.add_argument("--next")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = None
    if args.program:
        _, program = load_partition_artifact(args.program)
        compiled = CompiledProgram(program)
        spec = program.inputs[0]
        out_name = program.output_names[0]

        def run(data: bytes) -> bytes:
            x = torch.empty(spec.shape, dtype=spec.dtype)  # aligned, as the fastest decoder would do
            x.reshape(-1).view(torch.uint8).numpy()[:] = np.frombuffer(data, dtype=np.uint8)
            return compiled({spec.name: x})[out_name].contiguous().numpy().tobytes()

    call_next = None
    if args.next:
        channel = grpc.insecure_channel(args.next, options=OPTIONS)
        call_next = channel.unary_unary(METHOD)

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        data = run(request) if run else request
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
