"""The transport foundation without sockets: deadlines, the retry policy, the error decorator, the stream
reader and chunk assembly into one buffer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from splitinfer.codecs import (
    ChunkAssembler,
    CodecSpec,
    DecodeError,
    DecodeLimits,
    decode_wire,
    encode_tensor,
    split_tensor,
)
from splitinfer.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from splitinfer.routing import ReplicaBalancer
from splitinfer.transport.deadline import Deadline, clamp_timeout_s
from splitinfer.transport.reader import Admission, StreamTimeouts, read_stream
from splitinfer.transport.retry import RetryPolicy, call_replicas, call_replicas_sync
from splitinfer.transport.status import MAX_DETAILS_CHARS, map_errors, set_request_id
from splitinfer.v1 import model_server_pb2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("timeout_ms", "expected"),
    [(0, 300.0), (1, 0.001), (2_500, 2.5), (10**13, 300.0), (2**64 - 1, 300.0)],
)
def test_timeouts_from_peers_are_clamped(timeout_ms: int, expected: float) -> None:
    assert clamp_timeout_s(timeout_ms, None, 300.0) == pytest.approx(expected)


def test_grpc_deadline_wins_when_tighter() -> None:
    assert clamp_timeout_s(10_000, 0.5) == 0.5
    assert clamp_timeout_s(0, -3.0) == 0.0


def test_deadline_checks_and_passes_on() -> None:
    clock = FakeClock()
    deadline = Deadline.from_header(1500, None, 300.0, clock)
    assert deadline.timeout_ms() == 1500
    clock.now += 1.0
    assert deadline.check("after compute") == pytest.approx(0.5)
    clock.now += 0.6
    with pytest.raises(DeadlineExceeded, match="after compute"):
        deadline.check("after compute")
    assert deadline.timeout_ms() == 1  # never 0: that would mean "no deadline" to the next hop
    with pytest.raises(DeadlineExceeded, match="after computing model@v/p1"):
        deadline.check("after computing %s", "model@v/p1")  # formatted only when it fails


def test_attempt_budgets() -> None:
    policy = RetryPolicy(planned_factor=3.0, planned_slack_s=0.25, unplanned_fraction=0.5)
    assert policy.attempt_timeout_s(3.0, None, 1) == 1.5
    assert policy.attempt_timeout_s(3.0, 0.1, 1) == pytest.approx(0.55)
    assert policy.attempt_timeout_s(3.0, 0.1, 0) == 3.0  # the last replica gets all the time left
    assert policy.attempt_timeout_s(0.2, 5.0, 2) == 0.2
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_hung_replica_is_abandoned_within_its_budget() -> None:
    calls: list[tuple[str, float]] = []

    async def attempt(address: str, timeout_s: float) -> str:
        calls.append((address, timeout_s))
        if address == "hung":
            await asyncio.sleep(60)
        return f"answer from {address}"

    async def main() -> str:
        balancer = ReplicaBalancer()
        deadline = Deadline.after(1.0)
        order = iter(["hung", "ok"])
        balancer.choose = lambda addresses, exclude=frozenset(), fallbacks=(): next(order)  # type: ignore[method-assign]
        return await call_replicas(RetryPolicy(), balancer, ["hung", "ok"], [], deadline, None, attempt)

    loop_start = asyncio.run(_timed(main()))
    answer, elapsed = loop_start
    assert answer == "answer from ok"
    assert calls[0][0] == "hung" and calls[0][1] == pytest.approx(0.5, abs=0.01) and calls[1][0] == "ok"
    assert 0.45 < elapsed < 0.9


async def _timed(coro: Any) -> tuple[Any, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await coro
    return result, loop.time() - start


@pytest.mark.parametrize("error", [InvalidArgument("bad input"), NotFound("no such partition")])
def test_request_errors_are_not_retried(error: Exception) -> None:
    tried: list[str] = []

    def attempt(address: str, timeout_s: float) -> str:
        tried.append(address)
        raise error

    with pytest.raises(type(error)):
        call_replicas_sync(RetryPolicy(), ReplicaBalancer(), ["a", "b"], [], Deadline.after(5), None, attempt)
    assert len(tried) == 1


def test_refusals_move_to_the_next_replica_then_give_up() -> None:
    tried: list[str] = []

    def attempt(address: str, timeout_s: float) -> str:
        tried.append(address)
        raise ResourceExhausted("full") if address == "a" else Unavailable("down")

    with pytest.raises(Unavailable):
        call_replicas_sync(RetryPolicy(), ReplicaBalancer(), ["a"], ["b"], Deadline.after(5), None, attempt)
    assert tried == ["a", "b"]


def test_attempt_deadline_is_retried_request_deadline_is_not() -> None:
    tried: list[float] = []

    def attempt(address: str, timeout_s: float) -> str:
        tried.append(timeout_s)
        if len(tried) == 1:
            raise DeadlineExceeded("attempt ran out")
        return "ok"

    assert (
        call_replicas_sync(RetryPolicy(), ReplicaBalancer(), ["a", "b"], [], Deadline.after(2), None, attempt) == "ok"
    )
    assert tried[0] == pytest.approx(1.0, abs=0.05) and tried[1] == pytest.approx(2.0, abs=0.05)

    def always(address: str, timeout_s: float) -> str:
        raise DeadlineExceeded("whole request ran out")

    with pytest.raises(DeadlineExceeded):  # the last replica had all the time: no one else to try
        call_replicas_sync(RetryPolicy(), ReplicaBalancer(), ["a"], [], Deadline.after(1), None, always)


class FakeContext:
    def __init__(self) -> None:
        self.ended: tuple[grpc.StatusCode, str] | None = None

    def code(self) -> grpc.StatusCode | None:
        return self.ended[0] if self.ended else None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.ended = (code, details)
        raise Exception()  # what grpc's sync context does


class FakeAioContext(FakeContext):
    async def abort(self, code: grpc.StatusCode, details: str) -> None:  # type: ignore[override]
        self.ended = (code, details)
        raise grpc.aio.AbortError()


def test_error_decorator_maps_domain_errors_and_bounds_messages() -> None:
    failures: list[grpc.StatusCode] = []

    class Servicer:
        @map_errors(on_failure=failures.append)
        def Unary(self, request: str, context: Any) -> str:
            raise InvalidArgument("model " + request + " is unknown")

        @map_errors(on_failure=failures.append)
        async def Streamed(self, request: str, context: Any) -> AsyncIterator[str]:
            yield "first"
            set_request_id("req-42")
            raise ZeroDivisionError("secret internals")

    context = FakeContext()
    with pytest.raises(Exception):  # noqa: B017 - grpc's sync abort raises a bare Exception
        Servicer().Unary("x" * (1 << 20), context)
    assert context.ended is not None and context.ended[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert len(context.ended[1]) <= MAX_DETAILS_CHARS

    aio_context = FakeAioContext()

    async def drain() -> list[str]:
        return [item async for item in Servicer().Streamed("", aio_context)]

    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(drain())
    assert aio_context.ended is not None
    code, details = aio_context.ended
    assert code == grpc.StatusCode.INTERNAL and "req-42" in details and "secret" not in details
    assert failures == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL]


def test_chunks_assemble_into_one_buffer_and_decode_from_it() -> None:
    value = torch.randn(64, 1024)
    message = encode_tensor(value, "x", CodecSpec.parse("zstd"))
    assembler = ChunkAssembler()
    pieces = list(split_tensor(message, 4096))
    assert len(pieces) > 2
    results = [assembler.add(p) for p in pieces]
    assert all(r is None for r in results[:-1])
    wire = results[-1]
    assert wire is not None and isinstance(wire.payload, memoryview)
    assert torch.equal(decode_wire(wire.head, wire.payload), value)
    plain = ChunkAssembler()
    for piece in split_tensor(encode_tensor(value, "x"), 4096):
        raw = plain.add(piece)
    assert raw is not None
    decoded = decode_wire(raw.head, raw.payload)
    assert torch.equal(decoded, value)
    assert decoded.data_ptr() % 64 == 0  # aligned for the kernels, and decoded without a copy:
    assert decoded.data_ptr() == np.frombuffer(raw.payload, dtype=np.uint8).ctypes.data
    assembler.finish()


def test_precheck_sees_metadata_before_payload_and_budget_is_enforced() -> None:
    seen: list[str] = []

    def precheck(head: Any) -> None:
        seen.append(head.name)
        if head.name != "wanted":
            raise InvalidArgument(f"step does not read {head.name!r}")

    big = encode_tensor(torch.zeros(1 << 16), "unwanted")
    assembler = ChunkAssembler(precheck=precheck)
    with pytest.raises(InvalidArgument):
        assembler.add(next(iter(split_tensor(big, 1024))))
    assert seen == ["unwanted"] and assembler.incomplete == []

    budgeted = ChunkAssembler(max_total_bytes=1000)
    with pytest.raises(DecodeError, match="budget"):
        budgeted.add(next(iter(split_tensor(encode_tensor(torch.zeros(1024), "wanted"), 256))))


def _messages(*items: Any, delay_s: float = 0.0) -> AsyncIterator[Any]:
    async def gen() -> AsyncIterator[Any]:
        for item in items:
            if delay_s:
                await asyncio.sleep(delay_s)
            yield item

    return gen()


def test_reader_reads_header_then_tensors() -> None:
    tensor = encode_tensor(torch.arange(10.0), "x")
    header = model_server_pb2.RequestHeader(request_id="r1")
    stream = _messages(model_server_pb2.ProcessRequest(header=header), model_server_pb2.ProcessRequest(tensor=tensor))
    got_header, tensors = asyncio.run(read_stream(stream, StreamTimeouts(), DecodeLimits()))
    assert got_header.request_id == "r1" and list(tensors) == ["x"]


def test_reader_refuses_slow_and_malformed_streams() -> None:
    header = model_server_pb2.ProcessRequest(header=model_server_pb2.RequestHeader(request_id="r1"))
    with pytest.raises(DeadlineExceeded, match="header"):
        asyncio.run(read_stream(_messages(header, delay_s=0.3), StreamTimeouts(0.05, 1.0), DecodeLimits()))
    tensor = model_server_pb2.ProcessRequest(tensor=encode_tensor(torch.zeros(3), "x"))
    with pytest.raises(DeadlineExceeded, match="message"):
        slow = _messages(header, tensor, delay_s=0.1)
        asyncio.run(read_stream(slow, StreamTimeouts(1.0, 0.05), DecodeLimits()))
    with pytest.raises(InvalidArgument, match="start with a header"):
        asyncio.run(read_stream(_messages(tensor), StreamTimeouts(), DecodeLimits()))
    refuse = Admission(max_total_bytes=4)
    with pytest.raises(DecodeError, match="budget"):
        asyncio.run(read_stream(_messages(header, tensor), StreamTimeouts(), DecodeLimits(), admit=lambda h: refuse))


def test_peer_host_and_server_limits() -> None:
    from splitinfer.transport.aio_server import ServerLimits, peer_host

    assert peer_host("ipv4:10.0.0.1:5000") == "ipv4:10.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"
    with pytest.raises(ValueError, match="health checks"):
        ServerLimits(max_streams=100, max_streams_per_peer=10, max_concurrent_rpcs=100)
    with pytest.raises(ValueError, match="cannot exceed"):
        ServerLimits(max_streams=10, max_streams_per_peer=20, max_concurrent_rpcs=100)
