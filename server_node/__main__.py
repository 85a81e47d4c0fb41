"""``splitinfer-server``: run a server node.

splitinfer-server --port 0 --port-file /tmp/port --load /pool/tiny_cnn/tail
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from server_node.allocator import apply_malloc_policy
from server_node.compute import ComputeHook
from server_node.config import NodeConfig
from server_node.server import start_node
from splitinfer import tracing
from splitinfer.daemon import announce, wait_for_shutdown
from splitinfer.errors import SplitInferError
from splitinfer.security.tls import client_security_from_dir
from splitinfer.transport.channel import configure_client


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="splitinfer-server", description="Run a splitinfer server node.")
    cli.add_argument("--config", type=Path, help="JSON file with NodeConfig fields")
    cli.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    cli.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 0)")
    cli.add_argument("--advertise-address", help="address peers use to reach this node")
    cli.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    cli.add_argument("--torch-threads", type=int, help="torch intra-op threads")
    cli.add_argument("--registry", help="registry endpoint, etcd://host:port")
    cli.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: any free one; -1: off)")
    cli.add_argument("--tls-dir", help="certificates (make certs): serve mutual TLS, call peers with the cluster cert")
    cli.add_argument(
        "--load", type=Path, action="append", default=[], help="partition artifact directory to load at start"
    )
    cli.add_argument("--log-level", default="INFO")
    return cli


def main(argv: list[str] | None = None, compute_hook: ComputeHook | None = None) -> int:
    """Runs a node until SIGTERM; ``compute_hook`` is for emulation only (``python -m splitinfer.testbed node``)."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    tracing.configure("splitinfer-node")  # OTEL_* environment variables (off unless an exporter is set)
    try:
        config = NodeConfig.from_file(args.config) if args.config else NodeConfig()
    except ValueError as exc:
        logging.getLogger("splitinfer.server").error("%s", exc)
        return 2
    overrides = {
        "host": args.host,
        "port": args.port,
        "advertise_address": args.advertise_address,
        "torch_threads": args.torch_threads,
        "registry": args.registry,
        "metrics_port": args.metrics_port,
        "tls_dir": args.tls_dir,
    }
    try:
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        logging.getLogger("splitinfer.server").error("%s", exc)
        return 2
    if config.tls_dir:  # other nodes, sinks and pools are called with the cluster certificate
        configure_client(client_security_from_dir(Path(config.tls_dir), "cluster"))
    # Process-wide, so here and not in start_node (tests and tools run nodes inside other processes).
    apply_malloc_policy(config.malloc_mmap_threshold_bytes, config.malloc_trim_threshold_bytes, config.malloc_arena_max)
    node = start_node(config, compute_hook=compute_hook)
    try:
        for source in args.load:
            node.host.load(source, None)
        node.publish()
    except SplitInferError as exc:
        logging.getLogger("splitinfer.server").error("cannot load %s: %s", source, exc)
        node.stop(0)
        return 2
    announce(args.port_file, str(node.port))
    wait_for_shutdown()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
