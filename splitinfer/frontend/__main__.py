"""``python -m splitinfer.frontend``: run the front door (front-end, pool and result store services)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from splitinfer import tracing
from splitinfer.daemon import announce, wait_for_shutdown
from splitinfer.frontend.server import FrontEndConfig, start_frontend


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="splitinfer-frontend", description="Run the splitinfer front-end.")
    cli.add_argument("--host", default="127.0.0.1")
    cli.add_argument("--port", type=int, default=0)
    cli.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    cli.add_argument("--pool-dir", required=True)
    cli.add_argument("--results-db", default="")
    cli.add_argument("--results-address", default="")
    cli.add_argument("--registry", required=True, help="etcd://host:port")
    cli.add_argument("--tls-dir", default="", help="certificates and tokens (make certs): TLS, tokens, roles")
    cli.add_argument("--plan-ttl-s", type=float, default=300.0, help="how long a plan id stays valid")
    cli.add_argument("--metrics-port", type=int, default=-1, help="Prometheus /metrics port (0: any; -1: none)")
    cli.add_argument("--http-port", type=int, default=-1, help="KServe v2 REST port (0: any; -1: none)")
    cli.add_argument("--http-port-file", type=Path, help="write the bound REST port here once serving")
    cli.add_argument("--activity-window-s", type=float, default=60.0, help="window for requests per device class")
    cli.add_argument("--log-level", default="INFO")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tracing.configure("splitinfer-frontend")  # OTEL_* environment variables (off unless an exporter is set)
    frontend = start_frontend(
        FrontEndConfig(
            host=args.host,
            port=args.port,
            pool_dir=args.pool_dir,
            results_db=args.results_db,
            results_address=args.results_address,
            registry=args.registry,
            tls_dir=args.tls_dir,
            plan_ttl_s=args.plan_ttl_s,
            metrics_port=args.metrics_port,
            http_port=args.http_port,
            activity_window_s=args.activity_window_s,
        )
    )
    if frontend.http_port is not None:
        announce(args.http_port_file, str(frontend.http_port))
    announce(args.port_file, str(frontend.port))
    wait_for_shutdown()
    frontend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
