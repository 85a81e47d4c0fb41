"""The one reader of tensor streams (``Process``, ``Deliver``, ``Infer``): a header first, then tensors.

Every such stream is a sequence of messages with a ``kind`` oneof of ``header`` (first message only),
``tensor`` and ``chunk``. :func:`read_stream` reads one from a ``grpc.aio`` request iterator:

* the first message must arrive within ``timeouts.first_message_s`` and every later one within
  ``timeouts.idle_s`` of the previous one (DeadlineExceeded otherwise: the server closes streams that idle);
* after the header, ``admit(header)`` returns the :class:`Admission` of this request: a ``precheck`` that sees
  each tensor's name, dtype, shape and encoding BEFORE anything of it is buffered or decompressed, and a
  byte budget for all its tensors together; both raise to refuse the request;
* tensors are assembled by :class:`~splitinfer.codecs.ChunkAssembler`, each into one buffer, and returned
  as :class:`~splitinfer.codecs.WireTensor` s (decode them with ``decode_wire``, relay them with
  ``split_wire``).

    header, tensors = await read_stream(requests, StreamTimeouts(), limits, admit=lambda h: Admission(...))

:func:`read_tensors` does the same for a stream without a header (a response stream, say).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from splitinfer.codecs import ChunkAssembler, DecodeLimits, WireTensor
from splitinfer.codecs.chunks import Precheck
from splitinfer.errors import DeadlineExceeded, InvalidArgument

__all__ = ["Admission", "StreamTimeouts", "next_message", "read_stream", "read_tensors"]


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    #: Longest wait for a stream's first message, seconds.
    first_message_s: float = 5.0
    #: Longest wait between two messages of a stream, seconds.
    idle_s: float = 10.0

    def __post_init__(self) -> None:
        if self.first_message_s <= 0 or self.idle_s <= 0:
            raise ValueError("stream timeouts must be positive")


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request may send: checked per tensor before buffering, and in total."""

    precheck: Precheck | None = None
    max_total_bytes: int | None = None


async def next_message(iterator: AsyncIterator[Any], timeout_s: float, what: str) -> Any | None:
    """The next message, None at the end of the stream, DeadlineExceeded after ``timeout_s`` without one."""
    try:
        return await asyncio.wait_for(anext(iterator), timeout_s)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise DeadlineExceeded(f"no {what} within {timeout_s:g}s; the server closed the stream") from None


async def _tensors(
    iterator: AsyncIterator[Any], assembler: ChunkAssembler, idle_s: float, what: str
) -> dict[str, WireTensor]:
    received: dict[str, WireTensor] = {}
    while (message := await next_message(iterator, idle_s, f"message of the {what} stream")) is not None:
        kind = message.WhichOneof("kind")
        if kind not in ("tensor", "chunk"):
            raise InvalidArgument(f"a {what} stream carries one header, first, and then only tensors")
        complete = assembler.add(getattr(message, kind))
        if complete is not None:
            received[complete.name] = complete
    assembler.finish()
    return received


async def read_stream(
    requests: AsyncIterator[Any],
    timeouts: StreamTimeouts,
    limits: DecodeLimits,
    *,
    admit: Callable[[Any], Admission] | None = None,
    what: str = "request",
) -> tuple[Any, dict[str, WireTensor]]:
    """(header, tensors by name) of one stream; see the module docstring."""
    iterator = aiter(requests)
    first = await next_message(iterator, timeouts.first_message_s, f"header on the {what} stream")
    if first is None or first.WhichOneof("kind") != "header":
        raise InvalidArgument(f"a {what} stream must start with a header")
    header = first.header
    admission = admit(header) if admit is not None else Admission()
    assembler = ChunkAssembler(limits, precheck=admission.precheck, max_total_bytes=admission.max_total_bytes)
    return header, await _tensors(iterator, assembler, timeouts.idle_s, what)


async def read_tensors(
    messages: AsyncIterator[Any],
    idle_s: float,
    limits: DecodeLimits,
    *,
    admission: Admission | None = None,
    what: str = "response",
) -> dict[str, WireTensor]:
    """Tensors of a stream of ``tensor`` and ``chunk`` messages (no header), each within ``idle_s``."""
    admission = admission or Admission()
    assembler = ChunkAssembler(limits, precheck=admission.precheck, max_total_bytes=admission.max_total_bytes)
    return await _tensors(aiter(messages), assembler, idle_s, what)
