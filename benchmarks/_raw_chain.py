"""The floor for a chain: hand-rolled gRPC servers passing raw float32 bytes, no protobuf, no codecs.

Run by benchmarks/pipeline.py as separate processes:
    python benchmarks/_raw_chain.py --port-file F [--program DIR --next ADDR] [--aio]
With --program the server runs that partition on the bytes it receives (shape from the program), then
either forwards the result to --next and relays the answer, or returns it. Without --program it echoes.
With --aio the server is a grpc.aio one (as splitinfer's nodes are) instead of a synchronous one with four
threads: the same bytes, what grpc.aio itself costs. --malloc-* flags apply the node's allocator
policy (server_node.allocator), so that a baseline runs with the same malloc settings as the nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import torch

from server_node.allocator import apply_malloc_policy
from splitinfer.program import CompiledProgram
from splitinfer.runtime import load_partition_artifact

METHOD = "/raw.Chain/Call"
OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--program", type=Path)
    parser.add_argument("--next")
    parser.add_argument("--aio", action="store_true", help="a grpc.aio server (echo or --program only)")
    parser.add_argument("--malloc-mmap-threshold-bytes", type=int, default=0, help="as NodeConfig's (0: glibc's)")
    parser.add_argument("--malloc-trim-threshold-bytes", type=int, default=0, help="as NodeConfig's (0: glibc's)")
    parser.add_argument("--malloc-arena-max", type=int, default=0, help="as NodeConfig's (0: glibc's)")
    parser.add_argument(
        "--compute-log", type=Path, help="with --program: write each call's compute milliseconds here at exit"
    )
    args = parser.parse_args()
    # The same allocator settings as the nodes it is compared with (server_node.allocator).
    apply_malloc_policy(args.malloc_mmap_threshold_bytes, args.malloc_trim_threshold_bytes, args.malloc_arena_max)
    torch.set_num_threads(1)
    run = None
    compute_ms: list[float] = []
    if args.program:
        _, program = load_partition_artifact(args.program)
        compiled = CompiledProgram(program)
        spec = program.inputs[0]
        out_name = program.output_names[0]

        def run(data: bytes) -> bytes:
            x = torch.empty(spec.shape, dtype=spec.dtype)  # aligned, as the fastest decoder would do
            x.reshape(-1).view(torch.uint8).numpy()[:] = np.frombuffer(data, dtype=np.uint8)
            started = time.perf_counter()
            out = compiled({spec.name: x})[out_name]
            compute_ms.append((time.perf_counter() - started) * 1e3)  # what a node reports as compute_ms
            return out.contiguous().numpy().tobytes()

    if args.aio:
        if args.next:
            parser.error("--aio serves an echo or a --program, not a chain")
        asyncio.run(_serve_aio(args.port_file, run))
    else:
        serve_chain(args.port_file, run, args.next)
    if args.compute_log:
        args.compute_log.write_text(json.dumps(compute_ms))


def serve_chain(port_file: Path, run: Callable[[bytes], bytes] | None, next_address: str | None) -> None:
    """A synchronous server (four threads) that runs ``run`` on each request's bytes (none: echoes them),
    then forwards the result to ``next_address`` and relays the answer, or returns it; until SIGTERM."""
    call_next = None
    if next_address:
        channel = grpc.insecure_channel(next_address, options=OPTIONS)
        call_next = channel.unary_unary(METHOD)

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        data = run(request) if run else request
        return call_next(data) if call_next else data

    handler = grpc.method_handlers_generic_handler("raw.Chain", {"Call": grpc.unary_unary_rpc_method_handler(handle)})
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1)


async def _serve_aio(port_file: Path, run: Callable[[bytes], bytes] | None) -> None:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return run(request) if run else request

    handler = grpc.method_handlers_generic_handler("raw.Chain", {"Call": grpc.unary_unary_rpc_method_handler(handle)})
    server = grpc.aio.server(options=[*OPTIONS, ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    main()
