"""``python -m splitinfer.controller`` (``splitinfer-divider``): run the division controller."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from splitinfer.config import load_config
from splitinfer.controller.daemon import start_controller
from splitinfer.controller.policy import ControllerConfig
from splitinfer.daemon import announce, wait_for_shutdown
from splitinfer.registry import connect
from splitinfer.security.tls import client_security_from_dir


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="splitinfer-divider",
        description="Re-divide models as the active devices and the servers change, and roll divisions out live.",
    )
    cli.add_argument("--config", type=Path, help="ControllerConfig as JSON (thresholds, margins, drain times)")
    cli.add_argument("--model", action="append", default=[], help="model@variant to manage (repeatable)")
    cli.add_argument("--pool-dir", required=True, help="the pool directory the ModelPoolService serves")
    cli.add_argument("--pool-address", required=True, help="host:port of the ModelPoolService nodes pull from")
    cli.add_argument("--registry", required=True, help="etcd://host:port")
    cli.add_argument("--frontends", default="", help="comma-separated front-end addresses (default: the registry's)")
    cli.add_argument("--tls-dir", default="", help="certificates and tokens (make certs): acts with the admin identity")
    cli.add_argument("--ready-file", type=Path, help="written once the control loop runs")
    cli.add_argument("--log-level", default="INFO")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(ControllerConfig, args.config) if args.config else ControllerConfig()
    if args.model:
        config = dataclasses.replace(config, models=tuple(args.model))
    if not config.models:
        print("splitinfer-divider: name at least one model to manage (--model model@variant)", file=sys.stderr)
        return 2
    security = client_security_from_dir(Path(args.tls_dir), identity="admin") if args.tls_dir else None
    registry = connect(args.registry)
    running = start_controller(
        config,
        Path(args.pool_dir),
        registry,
        pool_address=args.pool_address,
        frontends=[a for a in args.frontends.split(",") if a],
        security=security,
    )
    announce(args.ready_file, "ready")
    wait_for_shutdown()
    running.stop()
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
