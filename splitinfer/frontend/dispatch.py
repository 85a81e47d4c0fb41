"""One request path for every front door: run a server-owned plan's server part, store it, learn from it.

Both the FrontEndService (devices) and the Open Inference Protocol door call :meth:`Dispatcher.run`. It is
transport-free: the doors decode and check their requests, resolve the caller and the plan, and map the
domain errors raised here to status codes.

Per request:

- the tensors sent must be exactly the plan's entry tensors;
- results belong to their caller: (caller, request id) is the key, with a digest of the model and inputs.
  A stored key with the same digest answers with the stored result (a retry, not run again); with another
  digest, FAILED_PRECONDITION. Concurrent tries of one key run once: the others wait for it and answer
  with the same result (or the same error);
- the route comes from the front-end's own plan, checked against the registry now: only addresses that
  are registered and host the step's partition are kept, and the route has no sink (outputs come back
  along the calls). A device never names an address;
- calibration learns from what the servers measured (their step timings) and from the device's reported
  step times, through ``Calibration.observe_request`` (bounded and outlier-filtered there), never from
  predictions a device sent. A device reports its partitions with its next request (this request's head,
  earlier requests' tails, requests it ran alone under a device-only plan), so each reported step is
  matched to the front-end's own plan that put that partition on that device: this one, or one of the
  last few the plan book issued to it;
- a device also reports each request it finished (``RequestReport``: its plan id, its device steps and the
  inference latency it measured, cold costs excluded), with a later request. Its total, less the servers'
  own timings of that request (kept here for the last ``MAX_KEPT_REQUESTS`` requests) and the device's steps,
  teaches the calibration the per-request overhead of that device's plans; it is matched only to plans this
  front-end issued to that caller and device, so a device that lies misleads only its own plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry import trace

from splitinfer import tracing
from splitinfer.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    SplitInferError,
    Unavailable,
)
from splitinfer.frontend.plans import REPLAN, IssuedPlan, PlanBook
from splitinfer.planner.calibration import Calibration, MeasuredStep
from splitinfer.planner.plan import ON_DEVICE, Plan
from splitinfer.postprocess import PostprocessSpec
from splitinfer.postprocess.apply import apply_postprocess
from splitinfer.registry import Registry
from splitinfer.results.client import Results, stored_result
from splitinfer.results.keys import input_digest, shown
from splitinfer.transport.clients import AsyncRouteClient, RouteClient
from splitinfer.v1 import frontend_pb2, model_server_pb2, result_store_pb2, route_pb2, tensor_pb2

__all__ = ["MAX_DEVICE_STEPS", "MAX_KEPT_REQUESTS", "MAX_REPORTS", "Dispatcher", "Job", "Outcome"]

log = logging.getLogger("splitinfer.frontend")

#: Device step timings read from one request (a device reports its recent partitions; more are ignored).
MAX_DEVICE_STEPS = 64
#: Request reports read from one Plan or Infer (more are ignored).
MAX_REPORTS = 64
#: Requests whose server step timings are kept for the device's report of their total (the oldest go first).
MAX_KEPT_REQUESTS = 4096


@dataclass(frozen=True)
class Job:
    """One request, checked by its front door."""

    caller: str
    request_id: str
    issued: IssuedPlan
    #: Encoded tensors by name: the plan's entry tensors.
    tensors: Mapping[str, tensor_pb2.Tensor]
    timeout_s: float
    device_ms: float = 0.0
    device_steps: Sequence[model_server_pb2.StepTiming] = ()
    #: Requests the device finished earlier (their totals), reported with this one.
    reports: Sequence[frontend_pb2.RequestReport] = ()
    #: Stored with the result (the device's id, or the front door's own for OIP).
    device_id: str = ""
    #: The caller's W3C trace context (its call's metadata): the request's span continues the caller's trace.
    trace_metadata: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class Outcome:
    outputs: list[tensor_pb2.Tensor]
    timings: list[model_server_pb2.StepTiming] = field(default_factory=list)
    server_ms: float = 0.0
    #: Answered from the store (or by a concurrent try of the same request), not run here.
    recalled: bool = False


class _Flight:
    """A request being run: concurrent tries of the same key wait for it."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.done = threading.Event()
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        #: Called (from the leader's thread) when the flight lands: how tries on an event loop wait for it
        #: without holding a thread. Guarded by the dispatcher's lock, like ``done`` being set.
        self.wakers: list[Callable[[], None]] = []

    def gave_up(self) -> bool:
        """Whether the leading try ended without an answer of the request's own (its caller cancelled, its
        deadline passed, the servers were unavailable): a waiting try then runs the request itself."""
        return self.outcome is None and isinstance(
            self.error, asyncio.CancelledError | DeadlineExceeded | Unavailable | ResourceExhausted | TimeoutError
        )


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        routes: RouteClient,
        results: Results | None,
        calibration: Calibration,
        plans: PlanBook | None = None,
        postprocess: Callable[[str, str], PostprocessSpec | None] | None = None,
        aroutes: AsyncRouteClient | None = None,
    ) -> None:
        self._registry = registry
        #: The post-processing stage of (model, variant), run here after the chain returns (a detector's
        #: decode and NMS); its outputs replace the ones it read, and its boxes are stored as detections.
        self._postprocess = postprocess
        self._routes = routes
        self._results = results
        self._calibration = calibration
        self._plans = plans
        #: Route calls from the event loop of a grpc.aio front door (:meth:`run_async`); None: every door
        #: runs requests through :meth:`run` on a worker thread.
        self._aroutes = aroutes
        self._flights: dict[tuple[str, str], _Flight] = {}
        #: (caller, device, request id) -> the servers' step timings of that request, for its report.
        self._server_steps: OrderedDict[tuple[str, str, str], list[MeasuredStep]] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, job: Job) -> Outcome:
        """Runs ``job`` in the calling thread (blocking: the route's calls, the store)."""
        if job.reports:  # earlier requests': learnt whether this one runs, is recalled or fails
            self.learn_reports(job.issued.caller, job.issued.device_id, job.reports)
        digest = self._check(job)
        key = (job.caller, job.request_id)
        until = time.monotonic() + job.timeout_s
        while (flight := self._board(key, digest, job.request_id)) is not None:
            if not flight.done.wait(max(0.0, until - time.monotonic())):
                raise _still_running(job.request_id)
            if (outcome := _followed(flight)) is not None:
                return outcome
        with self._leading(key) as flight:
            stored = stored_result(self._results, job.caller, job.request_id)
            flight.outcome = _recall(stored, digest, job.request_id) if stored is not None else self._run(job, digest)
        return flight.outcome

    async def run_async(self, job: Job) -> Outcome:
        """:meth:`run` for a ``grpc.aio`` front door, on its event loop: the route's calls go out on the
        loop's own channels (:class:`~splitinfer.transport.clients.AsyncRouteClient`), not from a worker
        thread through a second, synchronous gRPC stack, and only blocking work (the store, calibration from
        reports, post-processing) goes to the loop's executor; a concurrent try of a running request waits on
        the loop, holding no thread, and runs the request itself if the running try gives up. The checks are
        :meth:`run`'s, in the same order. Without an async route client: :meth:`run` on the executor."""
        if self._aroutes is None:
            return await _offload(self.run, job)
        if job.reports:
            await _offload(self.learn_reports, job.issued.caller, job.issued.device_id, job.reports)
        digest = self._check(job)
        key = (job.caller, job.request_id)
        until = time.monotonic() + job.timeout_s
        while (flight := self._board(key, digest, job.request_id)) is not None:
            await self._landing(flight, job.request_id, until - time.monotonic())
            if (outcome := _followed(flight)) is not None:
                return outcome
        with self._leading(key) as flight:
            if self._results is None or self._results.reads_in_process:  # a local read: no hop to a worker
                stored = stored_result(self._results, job.caller, job.request_id)
            else:
                stored = await _offload(stored_result, self._results, job.caller, job.request_id)
            if stored is not None:
                flight.outcome = _recall(stored, digest, job.request_id)
            else:
                with self._span(job) as current:
                    flight.outcome = await self._run_async(job, digest)
                    current.set_attribute("splitinfer.server_ms", flight.outcome.server_ms)
        return flight.outcome

    async def _run_async(self, job: Job, digest: str) -> Outcome:
        assert self._aroutes is not None
        plan = job.issued.plan
        route = self.route_for(job.issued)
        start = time.perf_counter()
        wires, timings = await self._aroutes.run(route, job.tensors, request_id=job.request_id, timeout_s=job.timeout_s)
        server_ms = (time.perf_counter() - start) * 1e3
        delivered = [wire.to_message() for wire in wires.values()]
        self._learn(job, timings)
        stage = self._postprocess(plan.model, plan.variant) if self._postprocess is not None else None
        detections: list[result_store_pb2.Detection] = []
        if stage is None:
            outputs = delivered
        else:  # decode and NMS are compute: off the loop
            outputs, detections = await _offload(apply_postprocess, stage, delivered)
        if self._results is None:
            return Outcome(outputs, timings, server_ms)
        # Stored through the store's group commit: no worker thread per request, one commit per group.
        result = self._result(job, digest, outputs, detections, server_ms)
        return self._stored(job, digest, *await self._results.put_async(result), outputs, timings, server_ms)

    def _check(self, job: Job) -> str:
        """The request's tensors against the plan's server part; the digest of its inputs."""
        plan = job.issued.plan
        if plan.route is None or not plan.route.steps:
            raise InvalidArgument("the plan has no server part to run (it runs wholly on the device)")
        wanted = job.issued.entry_tensors
        missing = [n for n in wanted if n not in job.tensors]
        extra = [n for n in job.tensors if n not in wanted]
        if missing or extra:
            raise InvalidArgument(
                f"the plan's server part reads {list(wanted)}; missing {[shown(n) for n in missing[:8]]}, "
                f"not read {[shown(n) for n in extra[:8]]}"
            )
        return _digest(plan.model, job.tensors.values())

    def _board(self, key: tuple[str, str], digest: str, request_id: str) -> _Flight | None:
        """The running try of ``key`` this try must wait for, or None when there is none: this try leads
        (it then boards with :meth:`_leading`, atomically with this answer). FailedPrecondition when the
        running try has other inputs."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                self._flights[key] = _Flight(digest)
                return None
        if flight.digest != digest:
            raise _reused(request_id)
        return flight

    @contextmanager
    def _leading(self, key: tuple[str, str]) -> Iterator[_Flight]:
        """The leading try's flight (boarded by :meth:`_board`). It looks the request up in the store and
        runs it only when not stored (so a try that boards just after another landed answers that one's
        result instead of running it again); its error is the followers' too, and the flight lands (leaves
        the board, wakes the followers) however the run ends."""
        with self._lock:
            flight = self._flights[key]
        try:
            yield flight
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
                flight.done.set()
                wakers, flight.wakers = flight.wakers, []
            for wake in wakers:
                wake()

    async def _landing(self, flight: _Flight, request_id: str, timeout_s: float) -> None:
        """Waits on the event loop, holding no thread, until ``flight`` lands; FailedPrecondition when it is
        still running after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        landed: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not landed.done():
                landed.set_result(None)

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(resolve)

        with self._lock:
            if flight.done.is_set():
                return
            flight.wakers.append(wake)
        try:
            await asyncio.wait_for(landed, max(0.0, timeout_s))
        except TimeoutError:
            raise _still_running(request_id) from None
        finally:
            with self._lock, contextlib.suppress(ValueError):
                flight.wakers.remove(wake)

    def _run(self, job: Job, digest: str) -> Outcome:
        with self._span(job) as current:
            outcome = self._run_traced(job, digest)
            current.set_attribute("splitinfer.server_ms", outcome.server_ms)
            return outcome

    def _span(self, job: Job) -> AbstractContextManager[trace.Span]:
        plan = job.issued.plan
        attributes = {
            "splitinfer.request_id": job.request_id, "splitinfer.model": plan.model,
            "splitinfer.variant": plan.variant, "splitinfer.plan": plan.summary(), "splitinfer.solver": plan.solver,
            "splitinfer.plan_id": job.issued.plan_id, "splitinfer.predicted_latency_ms": plan.predicted_latency_ms,
            "splitinfer.device_partitions": ",".join(plan.device_partitions),
            "splitinfer.requirements_missed": ",".join(plan.violated),
        }  # fmt: skip
        return tracing.span("splitinfer.frontend.request", parent=tracing.extract(job.trace_metadata),
                            attributes=attributes, kind=trace.SpanKind.SERVER)  # fmt: skip

    def _run_traced(self, job: Job, digest: str) -> Outcome:
        issued = job.issued
        plan = issued.plan
        route = self.route_for(issued)
        start = time.perf_counter()
        delivered, timings = self._routes.run(route, job.tensors, request_id=job.request_id, timeout_s=job.timeout_s)
        server_ms = (time.perf_counter() - start) * 1e3
        self._learn(job, timings)
        stage = self._postprocess(plan.model, plan.variant) if self._postprocess is not None else None
        outputs, detections = apply_postprocess(stage, list(delivered.values()))
        if self._results is None:
            return Outcome(outputs, timings, server_ms)
        return self._store(job, digest, outputs, detections, server_ms, timings)

    def _store(
        self,
        job: Job,
        digest: str,
        outputs: list[tensor_pb2.Tensor],
        detections: list[result_store_pb2.Detection],
        server_ms: float,
        timings: list[model_server_pb2.StepTiming],
    ) -> Outcome:
        assert self._results is not None
        stored, kept = self._results.put(self._result(job, digest, outputs, detections, server_ms))
        return self._stored(job, digest, stored, kept, outputs, timings, server_ms)

    @staticmethod
    def _result(
        job: Job,
        digest: str,
        outputs: list[tensor_pb2.Tensor],
        detections: list[result_store_pb2.Detection],
        server_ms: float,
    ) -> result_store_pb2.StoredResult:
        plan = job.issued.plan
        return result_store_pb2.StoredResult(
            request_id=job.request_id,
            caller=job.caller,
            device_id=job.device_id,
            input_digest=digest,
            model=plan.model,
            variant=plan.variant,
            plan_summary=plan.summary(),
            latency_ms=job.device_ms + server_ms,
            outputs=outputs,
            detections=detections,
        )

    @staticmethod
    def _stored(
        job: Job,
        digest: str,
        stored: bool,
        kept: result_store_pb2.StoredResult,
        outputs: list[tensor_pb2.Tensor],
        timings: list[model_server_pb2.StepTiming],
        server_ms: float,
    ) -> Outcome:
        """The outcome of a put: this run's, or (when another front-end stored this request first) what it
        stored."""
        if not stored:
            log.info("request %s was stored already (a concurrent retry elsewhere)", shown(job.request_id))
            return _recall(kept, digest, job.request_id)
        return Outcome(outputs, timings, server_ms)

    def route_for(self, issued: IssuedPlan) -> route_pb2.Route:
        """The route of the front-end's own plan, with only addresses the registry has for each partition
        now, and no sink."""
        assert issued.plan.route is not None
        route = route_pb2.Route()
        route.CopyFrom(issued.plan.route)
        route.ClearField("sink")
        for step in route.steps:
            ref = step.partition
            key = f"{ref.model}@{ref.variant}/{ref.partition}"
            hosting = {record.address for record in self._registry.replicas(key)}
            addresses = [a for a in step.addresses if a in hosting]
            fallbacks = [a for a in step.fallback_addresses if a in hosting and a not in addresses]
            if not addresses and fallbacks:
                addresses, fallbacks = fallbacks[:1], fallbacks[1:]
            if not addresses:
                raise FailedPrecondition(f"no server of plan {issued.plan_id!r} hosts {key} any more: {REPLAN}")
            del step.addresses[:]
            step.addresses.extend(addresses)
            del step.fallback_addresses[:]
            step.fallback_addresses.extend(fallbacks)
        return route

    def _learn(self, job: Job, timings: Sequence[model_server_pb2.StepTiming]) -> None:
        plan = job.issued.plan
        recent = self._plans.recent(job.issued.caller, job.issued.device_id) if self._plans is not None else []
        candidates = [plan, *(p for p in recent if p is not plan)]
        server_steps = [MeasuredStep(t.partition.partition, t.node, t.compute_ms) for t in timings if t.node]
        by_plan: dict[int, tuple[Plan, list[MeasuredStep]]] = {id(plan): (plan, server_steps)}
        self._observe(candidates, job.device_steps, by_plan, job.issued.device_id, job.request_id)
        with self._lock:
            self._server_steps[(job.issued.caller, job.issued.device_id, job.request_id)] = server_steps
            while len(self._server_steps) > MAX_KEPT_REQUESTS:
                self._server_steps.popitem(last=False)

    def learn_reports(self, caller: str, device_id: str, reports: Sequence[frontend_pb2.RequestReport]) -> None:
        """Requests the device finished, each with its measured inference latency: matched to the plan this
        front-end issued to ``caller`` for ``device_id`` under that id (reports of other plans are ignored),
        with the device's steps of the request and the servers' timings of it, when this front-end ran it.
        A plan with a server part whose timings are not here (another front-end ran it, or they were
        forgotten) teaches only its device steps: its total cannot be split."""
        if self._plans is None:
            return
        for report in reports[:MAX_REPORTS]:
            plan = self._plans.reported(report.plan_id, caller, device_id)
            if plan is None:
                continue
            device_steps = [
                MeasuredStep(t.partition.partition, ON_DEVICE, t.compute_ms)
                for t in report.device_steps[:MAX_DEVICE_STEPS]
                if _runs_on_device(plan, t.partition)
            ]
            with self._lock:
                server_steps = self._server_steps.pop((caller, device_id, report.request_id), None)
            offloaded = plan.route is not None and bool(plan.route.steps)
            total = report.inference_ms if server_steps is not None or not offloaded else None
            try:
                self._calibration.observe_request(
                    plan, device_steps, device_id=device_id, measured_total_ms=total, learned_steps=server_steps or ()
                )
            except SplitInferError as exc:  # calibration never fails a request
                log.warning("report of request %s: calibration refused it: %s", shown(report.request_id), exc)

    def learn_device_steps(self, caller: str, device_id: str, steps: Sequence[model_server_pb2.StepTiming]) -> None:
        """Device step times reported outside a request to the servers (with a Plan call: a device that runs
        alone never sends one), matched to the plans this front-end issued to that caller and device; steps
        of partitions no such plan put on the device are ignored."""
        recent = self._plans.recent(caller, device_id) if self._plans is not None else []
        self._observe(list(recent), steps, {}, device_id, "(plan)")

    def _observe(
        self,
        candidates: Sequence[Plan],
        device_steps: Sequence[model_server_pb2.StepTiming],
        by_plan: dict[int, tuple[Plan, list[MeasuredStep]]],
        device_id: str,
        what: str,
    ) -> None:
        for reported in device_steps[:MAX_DEVICE_STEPS]:
            ref = reported.partition
            owner = next((p for p in candidates if _runs_on_device(p, ref)), None)
            if owner is not None:
                by_plan.setdefault(id(owner), (owner, []))[1].append(
                    MeasuredStep(ref.partition, ON_DEVICE, reported.compute_ms)
                )
        for owner, steps in by_plan.values():
            try:
                self._calibration.observe_request(owner, steps, device_id=device_id)
            except SplitInferError as exc:  # calibration never fails a request that ran
                log.warning("request %s: calibration refused its timings: %s", shown(what), exc)


T = TypeVar("T")


def _followed(flight: _Flight) -> Outcome | None:
    """What a try that waited for a landed flight answers: the leader's outcome, or the leader's error when
    it was the request's own (a try of the same inputs would fail the same way); None when the leader gave
    up (:meth:`_Flight.gave_up`): this try then runs the request itself."""
    if flight.gave_up():
        return None
    if flight.outcome is None:
        error = flight.error
        if isinstance(error, SplitInferError):
            raise type(error)(str(error))  # a fresh exception: this try's own traceback and status
        raise Internal(f"the running try of this request failed ({type(error).__name__})")
    o = flight.outcome
    return Outcome(o.outputs, o.timings, o.server_ms, recalled=True)


def _still_running(request_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"request {shown(request_id)} is still running from an earlier try; retry later with the same id"
    )


async def _offload(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on the running loop's default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def _runs_on_device(plan: Plan, ref: route_pb2.PartitionRef) -> bool:
    if ref.model != plan.model or ref.variant != plan.variant:
        return False
    return any(p.partition == ref.partition and p.on_device for p in plan.placements)


def _digest(model: str, tensors: Iterable[tensor_pb2.Tensor]) -> str:
    inputs = input_digest(tensors)
    return hashlib.sha256(f"{model}\n{inputs}".encode()).hexdigest()


def _reused(request_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"request id {shown(request_id)} was already used for other inputs; use a new id for a new request"
    )


def _recall(stored: result_store_pb2.StoredResult, digest: str, request_id: str) -> Outcome:
    if stored.input_digest and stored.input_digest != digest:
        raise _reused(request_id)
    return Outcome(list(stored.outputs), recalled=True)
