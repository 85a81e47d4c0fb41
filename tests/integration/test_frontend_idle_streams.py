"""The front door under idle and hostile streams (grpc.aio): 1,000 Infer streams that open and send nothing
while 8 devices send good requests; every good request and every health check is answered, and the idle
streams are closed by the server at their first-message timeout. Streams beyond the per-peer cap are
refused with RESOURCE_EXHAUSTED while health checks go on.

Latency under load is measured by benchmarks/load.py, not asserted here (a shared 2-core machine).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinfer.frontend.client import FrontEndClient
from splitinfer.frontend.server import FrontEndConfig, RunningFrontEnd, start_frontend
from splitinfer.v1 import frontend_pb2, frontend_pb2_grpc, plan_pb2
from tests.integration._system import MODEL, SmallSystem, small_system

IDLE_STREAMS = 1000
DEVICES = 8
FIRST_MESSAGE_TIMEOUT_S = 8.0


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallSystem]:
    with small_system(tmp_path_factory.mktemp("idle"), variants=("fp32",)) as running:
        yield running


def _frontend(system: SmallSystem, tmp: Path, **config: object) -> RunningFrontEnd:
    return start_frontend(
        FrontEndConfig(pool_dir=str(system.pool.root), results_db=str(tmp / "results.db"), **config),  # type: ignore[arg-type]
        registry=system.registry,
    )


class IdleStreams:
    """Opens Infer streams that never send a message, on their own event loop and channels."""

    def __init__(self, address: str, count: int, channels: int = 10) -> None:
        self.address, self.count, self.channels = address, count, channels
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.outcomes: list[tuple[grpc.StatusCode, str, float]] = []
        self._done: asyncio.Future[None] | None = None
        self._release: asyncio.Event | None = None

    def open(self) -> None:
        async def start() -> None:
            self._release = asyncio.Event()
            release = self._release
            channels = [grpc.aio.insecure_channel(self.address) for _ in range(self.channels)]

            async def nothing() -> AsyncIterator[frontend_pb2.InferRequest]:
                await release.wait()  # sends nothing until the test is over
                return
                yield  # an async generator

            async def one(i: int) -> None:
                begun = time.monotonic()
                call = frontend_pb2_grpc.FrontEndServiceStub(channels[i % len(channels)]).Infer(nothing())
                try:
                    async for _ in call:
                        pass
                    self.outcomes.append((grpc.StatusCode.OK, "", time.monotonic() - begun))
                except grpc.aio.AioRpcError as exc:
                    self.outcomes.append((exc.code(), exc.details() or "", time.monotonic() - begun))

            async def all_of_them() -> None:
                await asyncio.gather(*(one(i) for i in range(self.count)))
                for channel in channels:
                    await channel.close(None)

            self._done = asyncio.ensure_future(all_of_them())

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def wait(self, timeout_s: float) -> None:
        assert self._done is not None
        done = self._done

        async def wait() -> None:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)

        asyncio.run_coroutine_threadsafe(wait(), self.loop).result(timeout_s + 5)

    def close(self) -> None:
        if self._release is not None:
            self.loop.call_soon_threadsafe(self._release.set)
        time.sleep(0.2)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def _ms(samples: list[float], q: float) -> str:
    ordered = sorted(samples)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3:.1f} ms"


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status)


def test_idle_streams_cost_no_thread_and_are_closed_at_their_timeout(system: SmallSystem, tmp_path: Path) -> None:
    frontend = _frontend(system, tmp_path, first_message_timeout_s=FIRST_MESSAGE_TIMEOUT_S, grpc_workers=8)
    idle = IdleStreams(frontend.address, IDLE_STREAMS)
    x = {system.input_name: system.example}

    def devices(answered: list[float], health: list[int]) -> list[int]:
        def device(index: int) -> int:
            state = plan_pb2.DeviceState(device_id=f"good-{index}", compute_flops=0, uplink_mbps=1000, rtt_ms=1)
            done = 0
            with FrontEndClient(frontend.address) as client:
                plan = client.plan(MODEL, state, timeout_s=20)
                for _ in range(3):
                    start = time.monotonic()
                    outputs, _ = client.infer(plan, state, x, timeout_s=20)
                    assert system.output_name in outputs
                    answered.append(time.monotonic() - start)
                    health.append(_health(frontend.address))
                    done += 1
            return done

        with ThreadPoolExecutor(DEVICES) as pool:
            return list(pool.map(device, range(DEVICES)))

    try:
        unloaded: list[float] = []
        devices(unloaded, [])  # the same load without idle streams, for the printed comparison
        threads_before = threading.active_count()
        opened = time.monotonic()
        idle.open()
        deadline = time.monotonic() + 30
        while frontend.limiter.active < IDLE_STREAMS:
            assert time.monotonic() < deadline, f"only {frontend.limiter.active} idle streams reached the server"
            time.sleep(0.05)
        assert time.monotonic() - opened < FIRST_MESSAGE_TIMEOUT_S - 2, "the idle streams took too long to open"
        # A thousand waiting streams hold no thread: the server's threads did not grow with them.
        assert threading.active_count() - threads_before < 50

        answered: list[float] = []
        health: list[int] = []
        counts = devices(answered, health)
        assert frontend.limiter.active >= IDLE_STREAMS, "the good requests did not all run beside the idle streams"
        assert counts == [3] * DEVICES and len(answered) == 3 * DEVICES
        assert health == [health_pb2.HealthCheckResponse.SERVING] * len(health)

        idle.wait(FIRST_MESSAGE_TIMEOUT_S + 30)
        assert len(idle.outcomes) == IDLE_STREAMS
        codes = {code for code, _, _ in idle.outcomes}
        assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert all("server closed the stream" in details for _, details, _ in idle.outcomes)
        waited = sorted(elapsed for _, _, elapsed in idle.outcomes)
        assert waited[0] >= FIRST_MESSAGE_TIMEOUT_S - 0.5  # closed at the timeout, not before
        # The server gives each slot back as its handler unwinds, just after the client saw the stream end.
        released_by = time.monotonic() + 5
        while frontend.limiter.active and time.monotonic() < released_by:
            time.sleep(0.02)
        assert frontend.limiter.active == 0
        print(
            f"\n{DEVICES} devices x 3 requests: unloaded p50 {_ms(unloaded, 0.5)}, max {_ms(unloaded, 1.0)}; beside "
            f"{IDLE_STREAMS} idle streams p50 {_ms(answered, 0.5)}, max {_ms(answered, 1.0)}; "
            f"idle streams closed after {waited[0]:.2f}-{waited[-1]:.2f} s"
        )
    finally:
        idle.close()
        frontend.stop(1)


def test_streams_beyond_the_per_peer_cap_are_refused_and_health_goes_on(system: SmallSystem, tmp_path: Path) -> None:
    frontend = _frontend(
        system, tmp_path, max_streams=40, max_streams_per_peer=10, first_message_timeout_s=20, idle_timeout_s=20
    )
    idle = IdleStreams(frontend.address, 10, channels=2)
    try:
        idle.open()
        deadline = time.monotonic() + 20
        while frontend.limiter.active < 10:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with grpc.insecure_channel(frontend.address) as channel:
            stub = frontend_pb2_grpc.FrontEndServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Infer(iter([frontend_pb2.InferRequest(header=frontend_pb2.InferHeader())]), timeout=10))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(refused.value.details() or "") < 200 and "limit" in (refused.value.details() or "")
        assert _health(frontend.address) == health_pb2.HealthCheckResponse.SERVING
        assert frontend.limiter.refused >= 1
    finally:
        idle.close()
        frontend.stop(1)
