"""The Model Pool and the Result Store as their own daemons, for deployments that run them apart from the
front-end (one per Kubernetes Deployment, say):

    python -m splitinfer.standalone pool --pool-dir /data/pool --port 50052
    python -m splitinfer.standalone results --results-db /data/results.db --port 50053

Each serves its service on ``grpc.aio`` (waiting streams cost no thread; file and database work runs on a
bounded pool of ``--workers`` threads) with gRPC health checking and reflection, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AioHealthServicer  # what health.aio re-exports

from splitinfer.daemon import announce, wait_for_shutdown
from splitinfer.frontend.serving import ServingLoop
from splitinfer.pool import ModelPool
from splitinfer.pool.service import ModelPoolServicer
from splitinfer.results import ResultStore
from splitinfer.results.service import ResultStoreServicer
from splitinfer.security.tls import server_security_from_dir
from splitinfer.transport.aio_server import new_aio_server
from splitinfer.transport.channel import bind
from splitinfer.transport.reflection import enable_reflection
from splitinfer.v1 import model_pool_pb2, model_pool_pb2_grpc, result_store_pb2, result_store_pb2_grpc

__all__ = ["main"]

log = logging.getLogger("splitinfer.standalone")


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m splitinfer.standalone", description=__doc__.split("\n\n")[0])
    cli.add_argument("service", choices=["pool", "results"])
    cli.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 in a container)")
    cli.add_argument("--port", type=int, default=0)
    cli.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    cli.add_argument("--pool-dir", type=Path, help="the pool directory (pool)")
    cli.add_argument("--results-db", type=Path, help="the SQLite results database (results)")
    cli.add_argument("--workers", type=int, default=16)
    cli.add_argument(
        "--tls-dir", type=Path, help="certificates and tokens (make certs); results then require mutual TLS"
    )
    cli.add_argument("--log-level", default="INFO")
    return cli


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    security = None
    if args.tls_dir:  # devices pull from the pool with tokens; only components write results (mutual TLS)
        security = server_security_from_dir(args.tls_dir, require_client_cert=args.service == "results")
    store = None
    servicer: object
    if args.service == "pool":
        if args.pool_dir is None:
            cli.error("pool needs --pool-dir")
        servicer = ModelPoolServicer(ModelPool(args.pool_dir))
        add = model_pool_pb2_grpc.add_ModelPoolServiceServicer_to_server
        name = model_pool_pb2.DESCRIPTOR.services_by_name["ModelPoolService"].full_name
    else:
        if args.results_db is None:
            cli.error("results needs --results-db")
        store = ResultStore(args.results_db)
        servicer = ResultStoreServicer(store, security.tokens if security is not None else None)
        add = result_store_pb2_grpc.add_ResultStoreServiceServicer_to_server
        name = result_store_pb2.DESCRIPTOR.services_by_name["ResultStoreService"].full_name
    serving = ServingLoop(args.service, args.workers)
    health_servicer = AioHealthServicer()

    async def serve() -> int:
        server, _ = new_aio_server(security=security)
        add(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection(server, (name,))
        port = bind(server, f"{args.host}:{args.port}", security)
        serving.server = server
        await server.start()
        for service in ("", name):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        return port

    port = serving.run(serve())
    log.info("%s serving at %s:%d", name, args.host, port)
    announce(args.port_file, str(port))
    wait_for_shutdown()
    serving.stop(10, before=health_servicer.enter_graceful_shutdown)
    if store is not None:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
