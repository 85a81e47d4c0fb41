"""StreamLimiter's one-coroutine wrapping of coroutine unary-unary handlers (ProcessOnce, InferOnce) against
the general wrapping (rewrap_aio) that plain-function handlers and streams still get: the same caps, the same
INVALID_ARGUMENT for bytes that do not parse, the slot given back however the call ends. A real grpc.aio
server on port 0, driven from its own event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from splitinfer.transport.aio_server import ServerLimits, StreamLimiter, new_aio_server
from splitinfer.v1 import model_server_pb2

SERVICE = "test.Limited"
Parse = Callable[[bytes], Any]


def _parse(data: bytes) -> model_server_pb2.GetStatusRequest:
    return model_server_pb2.GetStatusRequest.FromString(data)


async def _serve(
    handlers: dict[str, grpc.RpcMethodHandler], limits: ServerLimits
) -> tuple[grpc.aio.Server, StreamLimiter, str]:
    refused: list[int] = []
    server, limiter = new_aio_server(limits, on_refused=lambda: refused.append(1))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, limiter, f"127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["coroutine", "function"])
def test_unary_calls_are_capped_guarded_and_give_their_slot_back(kind: str) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def slow(request: Any, context: grpc.aio.ServicerContext) -> bytes:
            entered.set()
            await release.wait()
            return b""

        def quick_sync(request: Any, context: grpc.aio.ServicerContext) -> bytes:
            return b""

        async def quick_async(request: Any, context: grpc.aio.ServicerContext) -> bytes:
            return b""

        async def failing(request: Any, context: grpc.aio.ServicerContext) -> bytes:
            raise RuntimeError("handler bug")

        quick = quick_async if kind == "coroutine" else quick_sync
        handlers = {
            "Slow": grpc.unary_unary_rpc_method_handler(slow, _parse, None),
            "Quick": grpc.unary_unary_rpc_method_handler(quick, _parse, None),
            "Failing": grpc.unary_unary_rpc_method_handler(failing, _parse, None),
        }
        limits = ServerLimits(max_streams=1, max_streams_per_peer=1, max_concurrent_rpcs=16)
        server, limiter, address = await _serve(handlers, limits)
        try:
            async with grpc.aio.insecure_channel(address) as channel:

                def method(name: str) -> Any:
                    return channel.unary_unary(f"/{SERVICE}/{name}", None, None)

                assert await method("Quick")(b"", timeout=10) == b""
                assert limiter.active == 0
                # Bytes that are no GetStatusRequest: INVALID_ARGUMENT, not INTERNAL; the slot comes back.
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await method("Quick")(b"\xff\xff\xff", timeout=10)
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "malformed" in (bad.value.details() or "")
                assert limiter.active == 0
                # A handler that raises gives its slot back too.
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await method("Failing")(b"", timeout=10)
                assert failed.value.code() == grpc.StatusCode.UNKNOWN
                assert limiter.active == 0
                # One call in progress fills the cap: the next is refused before its handler runs.
                pending = asyncio.ensure_future(method("Slow")(b"", timeout=10))
                await asyncio.wait_for(entered.wait(), 10)
                assert limiter.active == 1
                refused_before = limiter.refused
                with pytest.raises(grpc.aio.AioRpcError) as full:
                    await method("Quick")(b"", timeout=10)
                assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert limiter.refused == refused_before + 1
                release.set()
                assert await pending == b""
                assert limiter.active == 0
                # A call cancelled by its caller while it runs gives the slot back as well.
                entered.clear()
                release.clear()
                cancelled = asyncio.ensure_future(method("Slow")(b"", timeout=10))
                await asyncio.wait_for(entered.wait(), 10)
                cancelled.cancel()
                for _ in range(100):
                    if limiter.active == 0:
                        break
                    await asyncio.sleep(0.02)
                assert limiter.active == 0
                release.set()
                assert await method("Quick")(b"", timeout=10) == b""
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_streams_still_get_the_general_wrapping() -> None:
    async def scenario() -> None:
        async def echo(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for _ in requests:
                yield b""

        handlers = {"Echo": grpc.stream_stream_rpc_method_handler(echo, _parse, None)}
        server, limiter, address = await _serve(handlers, ServerLimits(max_streams=4, max_streams_per_peer=4,
                                                                       max_concurrent_rpcs=16))  # fmt: skip
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                call = channel.stream_stream(f"/{SERVICE}/Echo", None, None)
                answers = [answer async for answer in call(iter([b"", b""]), timeout=10)]
                assert answers == [b"", b""]
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    async for _ in call(iter([b"\xff\xff\xff"]), timeout=10):
                        pass
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert limiter.active == 0
        finally:
            await server.stop(0)

    asyncio.run(scenario())
