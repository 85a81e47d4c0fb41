"""Where partitions run: a bounded pool of compute threads, behind one method.

    outputs, timing = await pool.run(partition, inputs, deadline)

The event loop never runs a partition: :meth:`ComputePool.run` queues the run on ``threads`` threads (sized
to the host's compute threads), waits for it without holding anything, and reports queue and compute time.
A request whose deadline passes while it waits is dropped from the queue; one that is dequeued after its
deadline does not run; the deadline is checked again when compute ends.

Errors raised by the partition because of the input's values (an index out of range in an embedding, a
shape the ops reject: IndexError, RuntimeError, ValueError from torch) become InvalidArgument: the request
is at fault, and another replica would fail the same way. Anything else travels up as is (INTERNAL).

Emulation (tests, the demo) plugs in through :class:`ComputeHook` (see :mod:`splitinfer.testbed`); the
production path has none.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from splitinfer.errors import DeadlineExceeded, InvalidArgument, SplitInferError
from splitinfer.runtime import LoadedPartition
from splitinfer.transport.deadline import Deadline

__all__ = ["ComputeHook", "ComputePool", "RunTiming", "compute_threads"]

T = TypeVar("T")

#: Exceptions a partition raises because of its input's values (not a bug of the server).
INPUT_ERRORS: tuple[type[BaseException], ...] = (IndexError, RuntimeError, ValueError)


class ComputeHook(Protocol):
    """Changes how compute behaves, for emulation only (e.g. a slower machine)."""

    def after_run(self, partition: LoadedPartition, elapsed_s: float) -> None:
        """Called in the compute thread after each run, with the slot still held."""
        ...

    def reported_flops(self, measured: float) -> float:
        """The compute throughput the node reports, given what it measured."""
        ...


@dataclass(frozen=True, slots=True)
class RunTiming:
    queue_ms: float
    compute_ms: float


def compute_threads(configured: int, torch_threads: int) -> int:
    """Threads of the pool: ``configured``, or one per ``torch_threads`` cores (at least one)."""
    if configured > 0:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_run = torch_threads or torch.get_num_threads()
    return max(1, cores // max(1, per_run))


async def _result_within(future: Future[T], timeout_s: float) -> T:
    """``future``'s result, awaited from the event loop, or TimeoutError after ``timeout_s``; on a timeout or
    when the waiting task is cancelled, ``future`` is cancelled (still queued: it will not run; running: its
    result is dropped). One loop future and one timer: cheaper than wait_for(wrap_future(...)) per run."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def transfer(done: Future[T]) -> None:
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
            return
        error = done.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    def finished(done: Future[T]) -> None:  # on the worker thread
        with suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
            loop.call_soon_threadsafe(transfer, done)

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())

    future.add_done_callback(finished)
    timer = loop.call_later(timeout_s, expire)
    try:
        return await waiter
    except BaseException:
        future.cancel()
        raise
    finally:
        timer.cancel()


class ComputePool:
    def __init__(self, threads: int, hook: ComputeHook | None = None, *, codec_threads: int = 2) -> None:
        self.threads = threads
        self._hook = hook
        # Partitions never need autograd: grad mode off on each compute thread for good (thread-local), so
        # that no run pays for a no_grad context.
        self._executor = ThreadPoolExecutor(
            threads, thread_name_prefix="compute", initializer=torch.set_grad_enabled, initargs=(False,)
        )
        self._codec = ThreadPoolExecutor(codec_threads, thread_name_prefix="codec")
        self._lock = threading.Lock()
        #: Runs waiting for a thread or running, by partition key string.
        self._queued: dict[str, int] = {}

    def queue_length(self, key: str | None = None) -> int:
        with self._lock:
            return self._queued.get(key, 0) if key is not None else sum(self._queued.values())

    def _count(self, key: str, delta: int) -> None:
        with self._lock:
            left = self._queued.get(key, 0) + delta
            if left:
                self._queued[key] = left
            else:
                self._queued.pop(key, None)

    def _call(
        self, partition: LoadedPartition, inputs: Mapping[str, torch.Tensor], submitted: float, deadline: Deadline
    ) -> tuple[dict[str, torch.Tensor], RunTiming]:
        started = time.perf_counter()
        deadline.check("while %s waited for a compute thread", partition.key)
        try:
            if torch.is_grad_enabled():  # off on the pool's threads and a node's loop thread (server_node.server)
                with torch.no_grad():
                    outputs = partition.run(inputs)
            else:
                outputs = partition.run(inputs)
        except SplitInferError:
            raise
        except INPUT_ERRORS as exc:
            raise InvalidArgument(
                f"partition {partition.key} cannot run on these input values ({type(exc).__name__})"
            ) from exc
        if self._hook is not None:
            self._hook.after_run(partition, time.perf_counter() - started)
        done = time.perf_counter()
        return outputs, RunTiming((started - submitted) * 1e3, (done - started) * 1e3)

    async def run(
        self, partition: LoadedPartition, inputs: Mapping[str, torch.Tensor], deadline: Deadline
    ) -> tuple[dict[str, torch.Tensor], RunTiming]:
        """Runs ``partition`` on ``inputs`` on a compute thread; see the module docstring."""
        if partition.batches:
            return await self._run_batched(partition, inputs, deadline)
        key = str(partition.key)
        self._count(key, 1)
        try:
            future = self._executor.submit(self._call, partition, inputs, time.perf_counter(), deadline)
            try:
                outputs, timing = await _result_within(future, deadline.check("before compute"))
            except TimeoutError:
                raise DeadlineExceeded(f"request deadline passed while {partition.key} waited or ran") from None
        finally:
            self._count(key, -1)
        deadline.check("after computing %s", partition.key)
        return outputs, timing

    def run_here(
        self, partition: LoadedPartition, inputs: Mapping[str, torch.Tensor], deadline: Deadline
    ) -> tuple[dict[str, torch.Tensor], RunTiming] | None:
        """Runs ``partition`` on the calling thread (the event loop) when nothing is queued, with the checks,
        timing and error mapping of :meth:`run`; None (nothing run) when runs are queued, the partition
        batches, or a hook emulates a slower machine. For partitions measured to take less than the two
        thread hand-offs of :meth:`run` (the caller decides: ``server_node.executor.INLINE_COMPUTE_MS``)."""
        if self._hook is not None or partition.batches or self.queue_length():
            return None
        ran = self._call(partition, inputs, time.perf_counter(), deadline)
        deadline.check("after computing %s", partition.key)
        return ran

    async def _run_batched(
        self, partition: LoadedPartition, inputs: Mapping[str, torch.Tensor], deadline: Deadline
    ) -> tuple[dict[str, torch.Tensor], RunTiming]:
        """A partition that batches: the request joins its batcher's queue (which runs on its own thread,
        one run per batch) and waits without holding a compute thread. Its time is reported as compute."""
        key = str(partition.key)
        self._count(key, 1)
        started = time.perf_counter()
        try:
            remaining = deadline.check("before %s joined a batch", partition.key)
            future = partition.submit(inputs, remaining)
            try:
                outputs = await _result_within(future, remaining)
            except TimeoutError:
                raise DeadlineExceeded(f"request deadline passed while {partition.key} waited or ran") from None
            except INPUT_ERRORS as exc:
                raise InvalidArgument(
                    f"partition {partition.key} cannot run on these input values ({type(exc).__name__})"
                ) from exc
        finally:
            self._count(key, -1)
        deadline.check("after computing %s", partition.key)
        return outputs, RunTiming(0.0, (time.perf_counter() - started) * 1e3)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs codec work (decoding, encoding large tensors) off the event loop."""
        return await asyncio.wrap_future(self._codec.submit(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._codec.shutdown(wait=False, cancel_futures=True)
