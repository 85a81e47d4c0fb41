"""A ``grpc.aio`` server on its own event-loop thread, driven from synchronous code.

The front door, the standalone pool and result-store daemons and tests run their async servicers this way:
waiting and idle streams cost a coroutine on the loop, and blocking work (planning, routes, SQLite, files)
runs on one bounded thread pool (:attr:`ServingLoop.executor`, also the loop's default executor).

    serving = ServingLoop("frontend", workers=32)
    port = serving.run(build_and_start(...))      # a coroutine that adds servicers, binds and starts
    ...
    serving.stop(grace_s=5)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

__all__ = ["ServingLoop", "in_executor"]

T = TypeVar("T")


async def in_executor(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on the running loop's default executor (the serving loop's bounded pool)."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


class ServingLoop:
    def __init__(self, name: str, workers: int = 32) -> None:
        if workers < 1:
            raise ValueError("a serving loop needs at least one worker thread")
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-work")
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(self.executor)
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{name}-loop", daemon=True)
        self._thread.start()
        self.server: grpc.aio.Server | None = None
        self._stopped = False

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = 30.0) -> T:
        """Runs ``coro`` on the loop from another thread and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(
        self,
        grace_s: float = 5.0,
        before: Callable[[], Coroutine[Any, Any, None]] | None = None,
        after: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Runs ``before`` (graceful health shutdown, say), stops the server letting calls finish for up to
        ``grace_s``, runs ``after`` (closing the loop's client channels, say), then stops the loop and the pool."""
        if self._stopped:
            return
        self._stopped = True

        async def shutdown() -> None:
            if before is not None:
                await before()
            if self.server is not None:
                await self.server.stop(grace_s)
            if after is not None:
                await after()

        try:
            self.run(shutdown(), timeout_s=grace_s + 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.executor.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        self._thread.join()
