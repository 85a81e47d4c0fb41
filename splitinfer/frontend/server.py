"""A running front door: FrontEndService, the Open Inference Protocol's GRPCInferenceService, and (when
configured) the ModelPoolService and ResultStoreService of a single-machine deployment, with health and
reflection."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AioHealthServicer  # what health.aio re-exports

from splitinfer.controller.activity import ActivityWindow
from splitinfer.frontend.dispatch import Dispatcher
from splitinfer.frontend.kserve_rest import KServeRestConfig, RunningRest, servicer_dispatch, start_rest
from splitinfer.frontend.metrics import FrontEndMetrics
from splitinfer.frontend.oip import Deployer, InferenceServicer
from splitinfer.frontend.planning import PlanningService
from splitinfer.frontend.plans import PlanBook
from splitinfer.frontend.service import DEFAULT_MAX_REQUEST_BYTES, FrontEndServicer
from splitinfer.frontend.serving import ServingLoop
from splitinfer.inference import grpc_service_pb2 as oip
from splitinfer.inference import grpc_service_pb2_grpc as oip_grpc
from splitinfer.planner.planner import Planner
from splitinfer.planner.problem import CodecProfile
from splitinfer.planner.profiles import DEFAULT_CODECS
from splitinfer.pool import ModelPool
from splitinfer.pool.service import ModelPoolServicer
from splitinfer.postprocess.apply import StageLookup
from splitinfer.registry import FRONTEND, Registration, Registry, ServerRecord, connect
from splitinfer.results import ResultStore
from splitinfer.results.client import LocalResults, RemoteResults, Results
from splitinfer.results.service import ResultStoreServicer
from splitinfer.security.tls import ClientSecurity, client_security_from_dir, server_security_from_dir
from splitinfer.transport.aio_server import ServerLimits, StreamLimiter, new_aio_server
from splitinfer.transport.channel import bind
from splitinfer.transport.clients import AsyncRouteClient, RouteClient
from splitinfer.transport.deadline import DEFAULT_MAX_TIMEOUT_S
from splitinfer.transport.reader import StreamTimeouts
from splitinfer.transport.reflection import enable_reflection
from splitinfer.v1 import (
    frontend_pb2,
    frontend_pb2_grpc,
    model_pool_pb2,
    model_pool_pb2_grpc,
    result_store_pb2,
    result_store_pb2_grpc,
)

__all__ = ["FrontEndConfig", "RunningFrontEnd", "start_frontend"]

log = logging.getLogger("splitinfer.frontend")


@dataclass(frozen=True, slots=True)
class FrontEndConfig:
    host: str = "127.0.0.1"
    port: int = 0
    #: Pool directory served by this process; empty when the pool runs elsewhere.
    pool_dir: str = ""
    #: Results database served by this process (SQLite file); ignored when ``results_address`` is set.
    results_db: str = ""
    #: A shared ResultStoreService to write to instead of a local database.
    results_address: str = ""
    #: Registry endpoint, etcd://host:port.
    registry: str = ""
    #: Threads that run planning and requests (waiting streams cost none).
    grpc_workers: int = 32
    shutdown_grace_s: float = 10.0
    #: Keep at most this many results in a local database (oldest dropped first).
    results_max_rows: int = 1_000_000
    #: Directory from ``make certs``: serve TLS, authenticate devices by token (tokens.json) and check
    #: roles; call servers and the result store with the cluster certificate. Empty: plaintext, no auth.
    tls_dir: str = ""
    #: How long a plan id stays valid after Plan made it, and how many plans are kept (oldest dropped).
    plan_ttl_s: float = 300.0
    max_plans: int = 100_000
    #: Port of the Prometheus /metrics endpoint (0: any free one); -1 for none.
    metrics_port: int = -1
    #: Lease of the front-end's registry record (role "frontend": nodes accept it as a sink), seconds.
    registry_ttl_s: float = 10.0
    #: Streams (Infer, ModelStreamInfer, ...) in progress at once, in total and from one peer (IP address);
    #: more are refused with RESOURCE_EXHAUSTED before their first message. Health checks are not counted.
    max_streams: int = 4096
    max_streams_per_peer: int = 2048
    #: A stream must send its first message within this, and each next one within ``idle_timeout_s`` of the
    #: previous; the server closes it otherwise (DEADLINE_EXCEEDED).
    first_message_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    #: Longest a request may run (a larger or absent ``timeout_ms`` is clamped to it), seconds.
    max_timeout_s: float = DEFAULT_MAX_TIMEOUT_S
    #: Most payload bytes one Infer request may send, all its tensors together.
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: Sliding window over which requests are counted per device class (GetFrontEndStatus, metrics), seconds.
    activity_window_s: float = 60.0
    #: Port of the Open Inference Protocol over HTTP/REST (KServe v2; 0: any free one); -1 for none. HTTPS
    #: with ``tls_dir``'s server certificate; the same tokens and roles as the gRPC door.
    http_port: int = -1

    def __post_init__(self) -> None:
        if self.plan_ttl_s <= 0 or self.max_plans < 1:
            raise ValueError("plan_ttl_s must be > 0 and max_plans >= 1")
        if self.registry_ttl_s <= 0:
            raise ValueError("registry_ttl_s must be > 0")
        if min(self.first_message_timeout_s, self.idle_timeout_s, self.max_timeout_s) <= 0:
            raise ValueError("stream timeouts and max_timeout_s must be > 0")
        if not 0 < self.activity_window_s < float("inf"):
            raise ValueError("activity_window_s must be a positive number of seconds")
        if self.max_request_bytes < 1 or self.grpc_workers < 1:
            raise ValueError("max_request_bytes and grpc_workers must be >= 1")
        ServerLimits(  # the stream caps, checked here so that a bad config fails at load
            max_streams=self.max_streams,
            max_streams_per_peer=self.max_streams_per_peer,
            max_concurrent_rpcs=self.max_streams + 256,
        )


@dataclass
class RunningFrontEnd:
    serving: ServingLoop
    port: int
    address: str
    planner: Planner
    store: ResultStore | None
    health: AioHealthServicer
    registry: Registry
    plans: PlanBook
    metrics: FrontEndMetrics
    limiter: StreamLimiter
    metrics_port: int | None = None
    registration: Registration | None = None
    #: Requests per device class over the activity window.
    activity: ActivityWindow | None = None
    #: The KServe v2 REST door, when ``http_port`` asked for one.
    rest: RunningRest | None = None
    #: The serving loop's channels to the nodes (closed on the loop when the server has stopped).
    aroutes: AsyncRouteClient | None = None

    @property
    def http_port(self) -> int | None:
        return self.rest.port if self.rest is not None else None

    extra: list[object] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def server(self) -> grpc.aio.Server:
        assert self.serving.server is not None
        return self.serving.server

    def keep_registered(self, record: ServerRecord, ttl_s: float) -> None:
        """Registers the front-end (role FRONTEND) and renews its record every third of the lease."""
        self.registration = self.registry.register(record, ttl_s)

        def renew() -> None:
            while not self._stopping.wait(ttl_s / 3):
                if self.registration is not None:
                    self.registration.update(record)

        threading.Thread(target=renew, name="frontend-lease", daemon=True).start()

    async def _close_clients(self) -> None:
        if self.aroutes is not None:
            await self.aroutes.close()

    def stop(self, grace_s: float = 5.0) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.registration is not None:
            self.registration.close()  # nodes stop accepting this front-end as a sink
        if self.rest is not None:
            self.rest.stop(grace_s)
        self.serving.stop(grace_s, before=self.health.enter_graceful_shutdown, after=self._close_clients)
        if self.store is not None:
            self.store.close()
        self.registry.close()


def start_frontend(
    config: FrontEndConfig, registry: Registry | None = None, codecs: tuple[CodecProfile, ...] = DEFAULT_CODECS
) -> RunningFrontEnd:
    if registry is None:
        if not config.registry:
            raise ValueError("the front-end needs a registry (config.registry or an embedded one passed in)")
        registry = connect(config.registry)
    if not config.pool_dir:
        raise ValueError("the front-end needs the pool directory to plan with (pool_dir)")
    pool = ModelPool(Path(config.pool_dir))
    security = None
    client: ClientSecurity | None = None
    if config.tls_dir:
        security = server_security_from_dir(Path(config.tls_dir), require_client_cert=False)
        client = client_security_from_dir(Path(config.tls_dir), "cluster")
    tokens = security.tokens if security is not None else None
    store = None
    results: Results | None = None
    if config.results_address:
        results = RemoteResults(config.results_address, security=client)
    elif config.results_db:
        store = ResultStore(Path(config.results_db), max_rows=config.results_max_rows)
        results = LocalResults(store)
    planner = Planner()
    planning = PlanningService(pool, registry, planner, codecs=codecs)
    routes = RouteClient(security=client)
    plans = PlanBook(config.plan_ttl_s, config.max_plans)
    metrics = FrontEndMetrics()
    # One request path for both front doors.
    stages = StageLookup(lambda model, variant: pool.division(pool.resolve(model, variant, "default")))
    # The FrontEndService door calls the nodes from the serving loop (its own grpc.aio channels); the OIP
    # door's requests run on the loop's worker threads through ``routes``.
    aroutes = AsyncRouteClient(security=client)
    dispatcher = Dispatcher(registry, routes, results, planner.calibration, plans, postprocess=stages, aroutes=aroutes)
    timeouts = StreamTimeouts(config.first_message_timeout_s, config.idle_timeout_s)
    limits = ServerLimits(
        max_streams=config.max_streams,
        max_streams_per_peer=config.max_streams_per_peer,
        max_concurrent_rpcs=config.max_streams + 256,  # room above the data plane: health is always answered
    )
    names = [
        frontend_pb2.DESCRIPTOR.services_by_name["FrontEndService"].full_name,
        model_pool_pb2.DESCRIPTOR.services_by_name["ModelPoolService"].full_name,
        oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    ]
    if store is not None:
        names.append(result_store_pb2.DESCRIPTOR.services_by_name["ResultStoreService"].full_name)
    serving = ServingLoop("frontend", config.grpc_workers)
    activity = ActivityWindow(config.activity_window_s)
    doors: dict[str, InferenceServicer] = {}
    # Repository load/unload acts on the nodes with the admin identity when the cluster runs TLS (only an
    # admin caller may ask for it; see security/auth.py).
    admin = None
    if config.tls_dir:
        tls_path = Path(config.tls_dir)
        admin = client_security_from_dir(tls_path, "admin" if (tls_path / "admin.pem").exists() else "cluster")
    deployer = Deployer(pool, registry, security=admin)

    async def serve() -> tuple[int, AioHealthServicer, StreamLimiter]:
        server, limiter = new_aio_server(limits, security)
        frontend = FrontEndServicer(
            planning,
            dispatcher,
            plans,
            tokens=tokens,
            metrics=metrics,
            timeouts=timeouts,
            max_timeout_s=config.max_timeout_s,
            max_request_bytes=config.max_request_bytes,
            activity=activity,
            pool_root=Path(config.pool_dir),
        )
        frontend_pb2_grpc.add_FrontEndServiceServicer_to_server(frontend, server)
        # The Open Inference Protocol (KServe v2 / Triton) on the same port, for clients that speak it.
        inference = InferenceServicer(
            planning,
            dispatcher,
            plans,
            tokens=tokens,
            metrics=metrics,
            timeouts=timeouts,
            max_timeout_s=config.max_timeout_s,
            deployer=deployer,
        )
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
        doors["oip"] = inference
        model_pool_pb2_grpc.add_ModelPoolServiceServicer_to_server(ModelPoolServicer(pool), server)
        if store is not None:
            result_store_pb2_grpc.add_ResultStoreServiceServicer_to_server(ResultStoreServicer(store, tokens), server)
        health_servicer = AioHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection(server, names)
        port = bind(server, f"{config.host}:{config.port}", security)
        if port == 0:
            raise OSError(f"could not bind {config.host}:{config.port}")
        serving.server = server
        await server.start()
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return port, health_servicer, limiter

    try:
        port, health_servicer, limiter = serving.run(serve())
    except BaseException:
        serving.stop(0)
        raise
    address = f"{config.host}:{port}"
    deployer.pool_address = address
    metrics_port = metrics.serve(config.metrics_port, config.host) if config.metrics_port >= 0 else None
    log.info("front-end serving at %s", address)
    running = RunningFrontEnd(
        serving,
        port,
        address,
        planner,
        store,
        health_servicer,
        registry,
        plans,
        metrics,
        limiter,
        metrics_port,
        activity=activity,
        aroutes=aroutes,
    )
    if config.http_port >= 0:
        tls_dir = Path(config.tls_dir) if config.tls_dir else None
        rest_config = KServeRestConfig(
            host=config.host,
            port=config.http_port,
            max_timeout_s=config.max_timeout_s,
            tls_key_file=str(tls_dir / "server.key") if tls_dir else "",
            tls_cert_file=str(tls_dir / "server.pem") if tls_dir else "",
        )
        try:
            running.rest = start_rest(servicer_dispatch(doors["oip"], serving.loop, tokens), rest_config)
        except BaseException:
            running.stop(0)
            raise
    running.keep_registered(ServerRecord(address, role=FRONTEND), config.registry_ttl_s)
    return running
