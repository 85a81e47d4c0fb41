"""``splitinfer-agent``: the on-device daemon and its command line.

splitinfer-agent serve --config agent.json --listen unix:/tmp/splitinfer-agent.sock
splitinfer-agent infer --agent unix:/tmp/splitinfer-agent.sock --model resnet18 --input input=x.npy
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import torch

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from edge_agent.service import serve_agent
from splitinfer.codecs import decode_tensor, encode_tensor
from splitinfer.daemon import announce, wait_for_shutdown
from splitinfer.v1 import edge_agent_pb2, edge_agent_pb2_grpc, plan_pb2


def _serve(args: argparse.Namespace) -> int:
    config = AgentConfig.from_file(args.config) if args.config else AgentConfig()
    overrides = {"frontend": args.frontend, "pool": args.pool, "device_id": args.device_id}
    config = replace(config, **{k: v for k, v in overrides.items() if v})
    agent = EdgeAgent(config)
    server, address = serve_agent(agent, args.listen)
    announce(args.address_file, address)
    logging.getLogger("splitinfer.agent").info("agent %s serving apps at %s", config.device_id, address)
    wait_for_shutdown()
    server.stop(5).wait()
    agent.close()
    return 0


def _infer(args: argparse.Namespace) -> int:
    inputs = []
    for item in args.input:
        name, _, path = item.partition("=")
        array = np.load(path, allow_pickle=False)  # never unpickle what a file says
        inputs.append(encode_tensor(torch.from_numpy(array), name))
    request = edge_agent_pb2.EdgeAgentServiceInferRequest(
        model=args.model,
        inputs=inputs,
        requirements=plan_pb2.Requirements(max_latency_ms=args.max_latency_ms, min_accuracy=args.min_accuracy),
    )
    with grpc.insecure_channel(args.agent) as channel:
        try:
            response = edge_agent_pb2_grpc.EdgeAgentServiceStub(channel).Infer(request, timeout=args.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            print(f"error: {code}: {details}", file=sys.stderr)
            return 2
    print(f"request {response.request_id}: {response.plan_summary}")
    print(f"  device {response.device_ms:.1f} ms, remote {response.remote_ms:.1f} ms, total {response.total_ms:.1f} ms"
          + (" (device-only fallback)" if response.device_only_fallback else ""))  # fmt: skip
    outputs = {t.name: decode_tensor(t).numpy() for t in response.outputs}
    for name, value in outputs.items():
        flat = value.reshape(-1)
        print(f"  {name}: shape {list(value.shape)}, argmax {int(flat.argmax())}, first {flat[:5].round(4).tolist()}")
    if args.out:
        with args.out.open("wb") as f:
            np.savez(f, **outputs)  # type: ignore[arg-type]
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="splitinfer-agent", description="The splitinfer edge agent.")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the agent daemon")
    serve.add_argument("--config", type=Path)
    serve.add_argument("--frontend")
    serve.add_argument("--pool")
    serve.add_argument("--device-id")
    serve.add_argument("--listen", default="unix:/tmp/splitinfer-agent.sock")
    serve.add_argument("--address-file", type=Path)
    infer = commands.add_parser("infer", help="run one inference through a running agent")
    infer.add_argument("--agent", default="unix:/tmp/splitinfer-agent.sock")
    infer.add_argument("--model", required=True)
    infer.add_argument("--input", action="append", required=True, help="NAME=FILE.npy")
    infer.add_argument("--max-latency-ms", type=float, default=0.0)
    infer.add_argument("--min-accuracy", type=float, default=0.0)
    infer.add_argument("--timeout-s", type=float, default=60.0)
    infer.add_argument("--out", type=Path, help="write the outputs to this .npz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _serve(args) if args.command == "serve" else _infer(args)


if __name__ == "__main__":
    sys.exit(main())
