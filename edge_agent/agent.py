"""The edge agent: plans each request with the front-end, runs the device's partitions, streams the rest.

Per request: read the battery and the network, get a plan (reused while conditions stay in the same
buckets, for at most ``plan_ttl_s`` and never past the front-end's expiry), pull and verify only the
partitions the plan puts on the device, run the head, encode each of the plan's entry tensors with the
planned codec, stream them to the front-end under the plan's id (the front-end keeps the plan and decides
where it runs; an expired plan is re-planned once), decode what comes back, run the tail. Observed transfer
rates feed the next plan. When the front-end cannot be reached,
the agent runs the whole model itself and says so in the result.

Each result says apart what was cold (``cold_ms``: the Plan call and RTT probe when the plan was not
cached, manifest and partition pulls, partition loads) from the inference itself (``inference_ms``); a
request's report (its plan id, device step times and inference latency) rides with the next Plan or Infer
so that the front-end's calibration learns what the device really sees.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_agent.config import AgentConfig
from edge_agent.hooks import DeviceHook
from edge_agent.monitors import BatteryMonitor, NetworkEstimator
from splitinfer.codecs import CodecSpec, TensorAssembler, decode_tensor, encode_tensor
from splitinfer.errors import DeadlineExceeded, FailedPrecondition, NotFound, SplitInferError, Unavailable
from splitinfer.planner.plan import Plan
from splitinfer.planner.planner import log_bucket
from splitinfer.pool import ModelPool
from splitinfer.pool.service import PoolClient
from splitinfer.postprocess.apply import final_outputs
from splitinfer.runtime import LoadedPartition, load_partition
from splitinfer.runtime.compute import measure_flops
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.channel import open_channel
from splitinfer.transport.status import error_from_rpc
from splitinfer.transport.stream import ONCE_ANSWER_TOO_LARGE, ONCE_MAX_BYTES, stream_messages
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, model_server_pb2, plan_pb2, route_pb2, tensor_pb2

__all__ = ["AgentResult", "DevicePlan", "EdgeAgent"]

log = logging.getLogger("splitinfer.agent")
DIVISION = "default"

#: Seconds of cold costs of the request this thread is running, and how deep cold sections nest.
_COLD: ContextVar[list[float] | None] = ContextVar("splitinfer_agent_cold", default=None)


@contextmanager
def _cold() -> Iterator[None]:
    """Times a cold cost (a Plan call, a pull, a load) into the running request's ``cold_ms``; nested
    sections count once."""
    tally = _COLD.get()
    if tally is None or tally[1]:
        yield
        return
    tally[1] = 1
    begin = time.perf_counter()
    try:
        yield
    finally:
        tally[0] += time.perf_counter() - begin
        tally[1] = 0


def _cold_ms() -> float:
    tally = _COLD.get()
    return tally[0] * 1e3 if tally is not None else 0.0


@dataclass(frozen=True)
class AgentResult:
    request_id: str
    outputs: dict[str, torch.Tensor]
    plan: Plan | None
    device_only_fallback: bool
    device_ms: float
    remote_ms: float
    total_ms: float
    bytes_sent: int
    reason: str = ""
    #: Device energy this request cost (compute, codecs, radio), joules, by the agent's power figures.
    energy_j: float = 0.0
    #: The front-end's id of the plan that ran (empty when the device ran alone).
    plan_id: str = ""
    #: Cold costs inside ``total_ms``: the Plan call and RTT probe when the plan was not cached, manifest
    #: and partition pulls, partition loads.
    cold_ms: float = 0.0

    @property
    def inference_ms(self) -> float:
        """The request's latency without its cold costs: what a plan predicts."""
        return self.total_ms - self.cold_ms

    @property
    def plan_summary(self) -> str:
        if self.plan is None:
            return f"device only ({self.reason})"
        return self.plan.summary()


@dataclass(frozen=True)
class DevicePlan:
    """The device's share of a plan the front-end made and keeps: where each partition runs, the codecs, the
    tensors to send, and the id that names the plan in Infer."""

    plan: Plan
    plan_id: str
    entry_tensors: tuple[str, ...]
    #: Unix time (s) after which the front-end no longer knows the id.
    expires_unix_s: float

    @property
    def device_only(self) -> bool:
        return all(p.on_device for p in self.plan.placements)


def _client_security(config: AgentConfig) -> ClientSecurity | None:
    if not config.tls_ca_file:
        return None
    token = Path(config.token_file).read_text().strip() if config.token_file else ""
    return ClientSecurity(ca_pem=Path(config.tls_ca_file).read_bytes(), token=token)


class EdgeAgent:
    #: Reports of finished requests kept for the next Plan or Infer (older ones are dropped).
    MAX_REPORTS = 32

    def __init__(
        self,
        config: AgentConfig,
        battery: BatteryMonitor | None = None,
        network: NetworkEstimator | None = None,
        compute_flops: float | None = None,
        hook: DeviceHook | None = None,
    ) -> None:
        """``hook`` is for emulation only (``splitinfer.testbed.EmulatedDevice``); with none, a config that
        asks for an emulated slowdown or uplink gets the testbed's emulation injected from it."""
        self.config = config
        self.battery = battery or BatteryMonitor(
            emulated=config.emulated_battery,
            capacity_wh=config.battery_capacity_wh,
            start_percent=config.battery_start_percent,
            charging=config.charging,
        )
        self.network = network or NetworkEstimator()
        if config.emulated_uplink_mbps:
            self.network.emulated_uplink_mbps = config.emulated_uplink_mbps
        if config.compute_slowdown < 1:
            raise ValueError("compute_slowdown must be >= 1")
        if hook is None and (config.compute_slowdown > 1 or config.emulated_uplink_mbps):
            from splitinfer.testbed import EmulatedDevice  # emulation lives in the testbed, not here

            hook = EmulatedDevice(config.compute_slowdown, self.network)
        self.hook = hook
        measured = compute_flops or measure_flops(0.2)
        self.compute_flops = hook.reported_flops(measured) if hook is not None and not compute_flops else measured
        self.cache = Path(config.cache_dir or tempfile.mkdtemp(prefix="splitinfer-agent-"))
        self.local_pool = ModelPool(self.cache)
        self._security = _client_security(config)
        self._channel = open_channel(config.frontend, security=self._security)
        self._frontend = frontend_pb2_grpc.FrontEndServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._lock = threading.Lock()
        self._plans: dict[tuple[Any, ...], tuple[DevicePlan, float]] = {}
        #: Device partitions, on onnxruntime where the pool has their ONNX twin (the interpreter otherwise).
        self._programs: dict[tuple[str, str, str], LoadedPartition] = {}
        self._reports: list[frontend_pb2.RequestReport] = []
        self._manifest_sha: dict[tuple[str, str], str] = {}
        self._fallback_ready: set[tuple[str, str]] = set()
        self.plans_made = 0

    def close(self) -> None:
        self._channel.close()

    # --- conditions and plans -------------------------------------------------------------------------------

    def device_state(self) -> plan_pb2.DeviceState:
        battery = self.battery.read()
        uplink = self.network.uplink_mbps
        return plan_pb2.DeviceState(
            device_id=self.config.device_id,
            device_class=self.config.device_class,
            compute_flops=self.compute_flops,
            battery_percent=battery.percent,
            charging=battery.charging,
            uplink_mbps=uplink,
            downlink_mbps=uplink * 3,
            rtt_ms=self.network.rtt_ms,
            compute_power_w=self.config.compute_power_w,
            transmit_power_w=self.config.transmit_power_w,
        )

    def plan(self, model: str, requirements: plan_pb2.Requirements, *, fresh: bool = False) -> DevicePlan:
        """The plan for the current conditions: reused while they stay in the same buckets, within the TTL
        and the front-end's expiry (``fresh``: ask for a new one regardless)."""
        state = self.device_state()
        key = (
            model,
            requirements.SerializeToString(deterministic=True),
            log_bucket(state.uplink_mbps),
            min(9, int(state.battery_percent // 10)),
            state.charging,
        )
        now = time.monotonic()
        with self._lock:
            cached = self._plans.get(key)
        if cached is not None and cached[1] > now and cached[0].expires_unix_s > time.time() + 1 and not fresh:
            return cached[0]
        with _cold():
            return self._new_plan(model, requirements, key, now)

    def _new_plan(
        self, model: str, requirements: plan_pb2.Requirements, key: tuple[Any, ...], now: float
    ) -> DevicePlan:
        self._probe_rtt()
        state = self.device_state()
        # Request reports ride along: a device whose plans keep everything local reports them only here.
        reports = self._take_reports()
        request = frontend_pb2.PlanRequest(model=model, device=state, requirements=requirements, reports=reports)
        try:
            response = self._frontend.Plan(request, timeout=self.config.connect_timeout_s)
        except grpc.RpcError as exc:
            self._put_back(reports)
            raise error_from_rpc(exc, f"front-end {self.config.frontend}") from None
        plan = DevicePlan(
            Plan.from_proto(response.plan),
            response.plan.plan_id,
            tuple(response.plan.entry_tensors),
            response.plan.expires_unix_ms / 1e3,
        )
        with self._lock:
            self._plans[key] = (plan, now + self.config.plan_ttl_s)
            self.plans_made += 1
        if self.config.prefetch_fallback and not any(m == model for m, _ in self._fallback_ready):
            self._prefetch(model, plan.plan.variant)
        return plan

    def _prefetch(self, model: str, variant: str) -> None:
        """Pulls every partition of one variant, so that the device can run the model alone when the servers
        cannot be reached."""
        for entry in self._manifest(model, variant)["partitions"]:
            self._program(model, variant, entry["name"])
        self._fallback_ready.add((model, variant))

    def _probe_rtt(self) -> None:
        """A light probe before planning: one health check to the front-end, timed, feeds the RTT estimate."""
        start = time.perf_counter()
        try:
            self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.config.connect_timeout_s)
        except grpc.RpcError:
            return  # the Plan call that follows reports the failure
        self.network.observe_rtt(time.perf_counter() - start)

    # --- partitions ------------------------------------------------------------------------------------------

    def _manifest(self, model: str, variant: str, division_sha: str = "") -> dict[str, Any]:
        """The division manifest of ``model@variant``: the one a plan names (``division_sha``: divisions change
        while the system runs, and a plan stays tied to its own), else the pool's current one."""
        key = (model, variant)
        sha = division_sha or self._manifest_sha.get(key)
        # The listing names every variant's manifest, but only the one asked for is fetched: a variant known
        # from an earlier listing may still be missing locally.
        if sha is None or not self.local_pool.store.has(sha):
            with _cold():
                sha = self._fetch_manifest(key, sha)
        return self.local_pool.manifest(sha)

    def _fetch_manifest(self, key: tuple[str, str], sha: str | None) -> str:
        """Pulls the manifest ``sha`` names (found in the pool's listing when None) into the local store."""
        model, variant = key
        client = PoolClient(self.config.pool, security=self._security)
        try:
            if sha is None:
                for info in client.list_models(model):
                    for v in info.variants:
                        if DIVISION in v.division_manifests:
                            self._manifest_sha[(info.name, v.name)] = v.division_manifests[DIVISION]
                sha = self._manifest_sha.get(key)
                if sha is None:
                    raise NotFound(f"the pool has no division {DIVISION!r} of {model}@{variant}")
            client.fetch(sha, self.local_pool.store)
        finally:
            client.close()
        return sha

    def _program(self, model: str, variant: str, partition: str, division_sha: str = "") -> LoadedPartition:
        key = (model, variant, partition)  # partition names are unique across a variant's division versions
        program = self._programs.get(key)
        if program is not None:
            return program
        with _cold():
            return self._load_program(key, division_sha)

    def _load_program(self, key: tuple[str, str, str], division_sha: str) -> LoadedPartition:
        """Pulls (verified) and loads one partition the device has not run yet."""
        model, variant, partition = key
        manifest = self._manifest(model, variant, division_sha)
        entry = next((p for p in manifest["partitions"] if p["name"] == partition), None)
        if entry is None:
            raise NotFound(f"{model}@{variant} has no partition {partition!r}")
        missing = [sha for sha in entry["files"].values() if not self.local_pool.store.has(sha)]
        if missing:
            client = PoolClient(self.config.pool, security=self._security)
            try:
                for sha in missing:
                    client.fetch(sha, self.local_pool.store)  # verified against its sha256
            finally:
                client.close()
        target = self.cache / "partitions" / f"{model}@{variant}" / partition
        division = division_sha or self._manifest_sha[(model, variant)]
        manifest_sha = self.local_pool.export_partition(division, partition, target)
        program = load_partition(target, manifest_sha)
        program.warm_up()  # its first run's lazy initialisation is a cold cost, not the first request's
        self._programs[key] = program
        return program

    def _run_local(
        self,
        model: str,
        variant: str,
        names: list[str],
        values: dict[str, torch.Tensor],
        steps: list[model_server_pb2.StepTiming],
        division_sha: str = "",
    ) -> float:
        """Runs partitions in order, reading and adding to ``values`` and timing each into ``steps``; returns
        the seconds they took."""
        total = 0.0
        for name in names:
            program = self._program(model, variant, name, division_sha)
            begin = time.perf_counter()
            values.update(program.run({s: values[s] for s in program.program.input_names}))
            if self.hook is not None:
                self.hook.after_run(name, time.perf_counter() - begin)
            seconds = time.perf_counter() - begin
            steps.append(
                model_server_pb2.StepTiming(
                    partition=route_pb2.PartitionRef(model=model, variant=variant, partition=name),
                    compute_ms=seconds * 1e3,
                )
            )
            total += seconds
        return total

    def _report(
        self, request_id: str, plan_id: str, inference_ms: float, steps: list[model_server_pb2.StepTiming]
    ) -> None:
        """Keeps a finished request's report for the next Plan or Infer (the front-end calibrates from it)."""
        if not plan_id:
            return
        report = frontend_pb2.RequestReport(
            request_id=request_id, plan_id=plan_id, inference_ms=inference_ms, device_steps=steps
        )
        with self._lock:
            self._reports.append(report)
            del self._reports[: -self.MAX_REPORTS]

    def _infer_once(
        self, header: frontend_pb2.InferHeader, messages: list[tensor_pb2.Tensor]
    ) -> frontend_pb2.InferOnceResponse | None:
        """The request in one InferOnce call; None when its answer was too large for one message (the
        front-end stored it: the Infer stream under the same request id delivers it)."""
        try:
            answer: frontend_pb2.InferOnceResponse = self._frontend.InferOnce(
                frontend_pb2.InferOnceRequest(header=header, tensors=messages), timeout=self.config.request_timeout_s
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and ONCE_ANSWER_TOO_LARGE in (exc.details() or ""):
                return None
            raise
        return answer

    def _take_reports(self) -> list[frontend_pb2.RequestReport]:
        with self._lock:
            reports, self._reports = self._reports, []
        return reports

    def _put_back(self, reports: list[frontend_pb2.RequestReport]) -> None:
        """Reports a call did not deliver go out with the next one."""
        with self._lock:
            self._reports[:0] = reports
            del self._reports[: -self.MAX_REPORTS]

    # --- requests --------------------------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, torch.Tensor],
        requirements: plan_pb2.Requirements | None = None,
        request_id: str = "",
    ) -> AgentResult:
        requirements = requirements or plan_pb2.Requirements()
        request_id = request_id or uuid.uuid4().hex
        start = time.perf_counter()
        token = _COLD.set([0.0, 0.0])
        try:
            plan = self.plan(model, requirements)
            if plan.device_only:
                return self._device_only(
                    model, plan.plan.variant, inputs, request_id, start, plan, "the plan keeps all"
                )
            try:
                return self._split(model, plan, inputs, request_id, start)
            except FailedPrecondition as exc:  # the front-end forgot the plan (expired, restarted): plan again
                log.info("request %s: %s; planning again", request_id, exc)
                plan = self.plan(model, requirements, fresh=True)
                if plan.device_only:
                    return self._device_only(
                        model, plan.plan.variant, inputs, request_id, start, plan, "the plan keeps all"
                    )
                return self._split(model, plan, inputs, request_id, start)
        except (Unavailable, DeadlineExceeded) as exc:
            log.warning("request %s: servers unreachable (%s); running on the device", request_id, exc)
            variant = self._fallback_variant(model)
            return self._device_only(model, variant, inputs, request_id, start, None, f"servers unreachable: {exc}")
        finally:
            _COLD.reset(token)

    def _fallback_variant(self, model: str) -> str:
        ready = sorted(v for (m, v) in self._fallback_ready if m == model)
        if not ready:
            raise Unavailable(f"the servers are unreachable and no variant of {model} is on the device yet")
        return "fp32" if "fp32" in ready else ready[0]

    def _device_only(
        self,
        model: str,
        variant: str,
        inputs: Mapping[str, torch.Tensor],
        request_id: str,
        start: float,
        device_plan: DevicePlan | None,
        reason: str,
    ) -> AgentResult:
        plan = device_plan.plan if device_plan is not None else None
        division = plan.division_sha256 if plan is not None else ""
        manifest = self._manifest(model, variant, division)
        values = dict(inputs)
        steps: list[model_server_pb2.StepTiming] = []
        names = [p["name"] for p in manifest["partitions"]]
        device_s = self._run_local(model, variant, names, values, steps, division)
        energy = device_s * self.config.compute_power_w
        self.battery.drain(energy)
        outputs = final_outputs(manifest, values, ran_last_here=True, request_id=request_id)
        total_ms, cold_ms = (time.perf_counter() - start) * 1e3, _cold_ms()
        if device_plan is not None:  # reported under its plan, though the result names none (it ran alone)
            self._report(request_id, device_plan.plan_id, total_ms - cold_ms, steps)
        return AgentResult(
            request_id, outputs, plan, plan is None, device_s * 1e3, 0.0, total_ms, 0, reason, energy_j=energy,
            cold_ms=cold_ms,
        )  # fmt: skip

    def _split(
        self, model: str, device_plan: DevicePlan, inputs: Mapping[str, torch.Tensor], request_id: str, start: float
    ) -> AgentResult:
        plan = device_plan.plan
        manifest = self._manifest(model, plan.variant, plan.division_sha256)
        order = [p["name"] for p in manifest["partitions"]]
        on_device = {p.partition for p in plan.placements if p.on_device}
        servers = [i for i, name in enumerate(order) if name not in on_device]
        head = [name for i, name in enumerate(order) if name in on_device and i < servers[0]]
        tail = [name for i, name in enumerate(order) if name in on_device and i > servers[-1]]
        values: dict[str, torch.Tensor] = dict(inputs)
        steps: list[model_server_pb2.StepTiming] = []
        device_s = self._run_local(model, plan.variant, head, values, steps, plan.division_sha256)
        encode_start = time.perf_counter()
        missing = [n for n in device_plan.entry_tensors if n not in values]
        if missing:
            raise SplitInferError(f"request {request_id}: the plan sends {missing}, which the device did not compute")
        codecs = {c.tensor: c.codec for c in plan.crossings}
        messages = [encode_tensor(values[n], n, codecs.get(n, CodecSpec())) for n in device_plan.entry_tensors]
        device_s += time.perf_counter() - encode_start
        bytes_sent = sum(len(m.payload) for m in messages)
        header = frontend_pb2.InferHeader(
            request_id=request_id,
            device=self.device_state(),
            plan_id=device_plan.plan_id,
            timeout_ms=int(self.config.request_timeout_s * 1e3),
            device_ms=device_s * 1e3,
            reports=self._take_reports(),
        )

        def requests() -> Iterator[frontend_pb2.InferRequest]:
            yield frontend_pb2.InferRequest(header=header)
            yield from stream_messages(frontend_pb2.InferRequest, messages)

        remote_start = time.perf_counter()
        if self.hook is not None:
            self.hook.before_send(bytes_sent)
        assembler = TensorAssembler()
        delivered = []
        trace = frontend_pb2.InferTrace()
        try:
            answer = None
            if bytes_sent <= ONCE_MAX_BYTES:  # one message each way: a stream costs more per call in grpcio
                answer = self._infer_once(header, messages)
            if answer is not None:
                trace, delivered = answer.trace, list(answer.tensors)
            else:
                for response in self._frontend.Infer(requests(), timeout=self.config.request_timeout_s):
                    kind = response.WhichOneof("kind")
                    if kind == "trace":
                        trace = response.trace
                    elif kind is not None:
                        complete = assembler.add(getattr(response, kind))
                        if complete is not None:
                            delivered.append(complete)
                assembler.finish()
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"front-end {self.config.frontend}") from None
        remote_s = time.perf_counter() - remote_start
        self.network.observe_transfer(bytes_sent, max(1e-6, remote_s - trace.server_ms / 1e3))
        decode_start = time.perf_counter()
        for message in delivered:
            values[message.name] = decode_tensor(message)
        device_s += time.perf_counter() - decode_start
        device_s += self._run_local(model, plan.variant, tail, values, steps, plan.division_sha256)
        network_s = max(0.0, remote_s - trace.server_ms / 1e3)
        energy = device_s * self.config.compute_power_w + network_s * self.config.transmit_power_w
        self.battery.drain(energy)
        # A declared post-processing stage runs where the plan ends: here after a device tail, else it ran
        # on the front-end and its outputs arrived.
        outputs = final_outputs(manifest, values, ran_last_here=bool(tail), request_id=request_id)
        total_ms, cold_ms = (time.perf_counter() - start) * 1e3, _cold_ms()
        self._report(request_id, device_plan.plan_id, total_ms - cold_ms, steps)
        return AgentResult(
            request_id,
            outputs,
            plan,
            False,
            device_s * 1e3,
            remote_s * 1e3,
            total_ms,
            bytes_sent,
            energy_j=energy,
            plan_id=device_plan.plan_id,
            cold_ms=cold_ms,
        )
