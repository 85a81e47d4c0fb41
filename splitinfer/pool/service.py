"""The ModelPoolService servicer and its client: artifacts streamed in chunks, verified by sha256."""

from __future__ import annotations

import asyncio
import hashlib
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.pool.pool import ModelPool
from splitinfer.pool.store import BlobStore, check_sha
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.channel import open_channel
from splitinfer.transport.reader import next_message
from splitinfer.transport.status import error_from_rpc, map_errors
from splitinfer.v1 import model_pool_pb2, model_pool_pb2_grpc

__all__ = ["ModelPoolServicer", "PoolClient", "fetch_partition", "parse_pool_uri", "pull_partition"]

CHUNK_BYTES = 1 << 20


class ModelPoolServicer(model_pool_pb2_grpc.ModelPoolServiceServicer):
    """For ``grpc.aio`` servers: file reads and writes run on the loop's default (bounded) executor, one
    chunk at a time, so a slow client costs no thread while it is waiting."""

    def __init__(self, pool: ModelPool, idle_s: float = 30.0) -> None:
        self._pool = pool
        self._idle_s = idle_s

    @map_errors()
    async def ListModels(
        self, request: model_pool_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> model_pool_pb2.ListModelsResponse:
        entries = await _blocking(self._pool.variants, request.name_prefix)
        models: dict[str, model_pool_pb2.ModelInfo] = {}
        for entry in entries:
            info = models.setdefault(entry.model, model_pool_pb2.ModelInfo(name=entry.model, task=entry.task))
            info.variants.append(
                model_pool_pb2.VariantInfo(
                    name=entry.variant,
                    accuracy=entry.accuracy,
                    accuracy_measured=entry.accuracy_measured,
                    division_manifests=entry.divisions,
                )
            )
        return model_pool_pb2.ListModelsResponse(models=list(models.values()))

    @map_errors()
    async def FetchArtifact(
        self, request: model_pool_pb2.FetchArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_pool_pb2.FetchArtifactResponse]:
        sha = check_sha(request.sha256)
        # stream() verifies the blob before the first byte goes out
        chunks = await _blocking(self._pool.store.stream, sha)
        first = await _blocking(next, chunks, b"")
        size = (await _blocking(self._pool.store.path(sha).stat)).st_size
        yield model_pool_pb2.FetchArtifactResponse(size_bytes=size, sha256=sha, data=first)
        while (chunk := await _blocking(next, chunks, None)) is not None:
            yield model_pool_pb2.FetchArtifactResponse(data=chunk)

    @map_errors()
    async def PutArtifact(
        self, request_iterator: AsyncIterator[model_pool_pb2.PutArtifactRequest], context: grpc.aio.ServicerContext
    ) -> model_pool_pb2.PutArtifactResponse:
        messages = aiter(request_iterator)
        first = await next_message(messages, self._idle_s, "PutArtifact message")
        if first is None:
            raise InvalidArgument("PutArtifact stream is empty")
        if not first.sha256:
            raise InvalidArgument("the first PutArtifact message must declare sha256 and size_bytes")
        # The store hashes and writes on a worker thread, fed chunk by chunk (at most a few held at once).
        feed: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        loop = asyncio.get_running_loop()
        writing = loop.run_in_executor(
            None, lambda: self._pool.store.put(iter(feed.get, None), first.sha256, first.size_bytes)
        )
        try:
            data: bytes | None = first.data
            while data is not None:
                if not await _blocking(_offer, feed, data, writing):
                    break  # the store refused the blob already: its error is the answer
                message = await next_message(messages, self._idle_s, "PutArtifact message")
                data = None if message is None else message.data
            if not writing.done():
                await _blocking(_offer, feed, None, writing)
            sha, present = await writing
        finally:
            if not writing.done():  # the client went away or idled: end the writer's input (a short blob is
                loop.run_in_executor(None, _offer, feed, None, writing)  # refused by its size and sha256)
        return model_pool_pb2.PutArtifactResponse(sha256=sha, already_present=present)


T = TypeVar("T")


async def _blocking(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def _offer(feed: queue.Queue[bytes | None], item: bytes | None, writer: Future[Any] | asyncio.Future[Any]) -> bool:
    """Puts ``item`` on the writer's queue, waiting while it is full; False once the writer has ended."""
    while not writer.done():
        try:
            feed.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class PoolClient:
    """Fetches artifacts from a remote pool into a local store, verifying each one."""

    def __init__(self, address: str, security: ClientSecurity | None = None) -> None:
        self._channel = open_channel(address, security=security)
        self._stub = model_pool_pb2_grpc.ModelPoolServiceStub(self._channel)
        self.address = address

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def list_models(self, prefix: str = "") -> list[model_pool_pb2.ModelInfo]:
        try:
            return list(self._stub.ListModels(model_pool_pb2.ListModelsRequest(name_prefix=prefix), timeout=30).models)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"pool {self.address}") from None

    def fetch(self, sha256: str, into: BlobStore, timeout_s: float = 300.0) -> Path:
        """Copies one artifact into ``into`` (skipped when present); FailedPrecondition if the bytes that
        arrive do not hash to ``sha256``."""
        if into.has(sha256):
            return into.path(sha256)
        try:
            stream = self._stub.FetchArtifact(model_pool_pb2.FetchArtifactRequest(sha256=sha256), timeout=timeout_s)
            first = next(stream)
            if first.sha256 != sha256:
                raise FailedPrecondition(f"pool answered artifact {first.sha256!r} for {sha256}")

            def chunks() -> Iterator[bytes]:
                yield first.data
                for message in stream:
                    yield message.data

            try:
                into.put(chunks(), sha256, first.size_bytes)
            except InvalidArgument as exc:
                raise FailedPrecondition(f"artifact {sha256} from {self.address} failed verification: {exc}") from None
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"pool {self.address}") from None
        return into.path(sha256)

    def put(self, data: bytes, timeout_s: float = 300.0) -> model_pool_pb2.PutArtifactResponse:
        sha = hashlib.sha256(data).hexdigest()

        def requests() -> Iterator[model_pool_pb2.PutArtifactRequest]:
            view = memoryview(data)
            yield model_pool_pb2.PutArtifactRequest(sha256=sha, size_bytes=len(data), data=bytes(view[:CHUNK_BYTES]))
            for offset in range(CHUNK_BYTES, len(data), CHUNK_BYTES):
                yield model_pool_pb2.PutArtifactRequest(data=bytes(view[offset : offset + CHUNK_BYTES]))

        try:
            response: model_pool_pb2.PutArtifactResponse = self._stub.PutArtifact(requests(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"pool {self.address}") from None
        return response


POOL_SCHEME = "pool://"


def parse_pool_uri(uri: str) -> tuple[str, str, str]:
    """``pool://HOST:PORT/DIVISION_MANIFEST_SHA256/PARTITION`` -> (address, manifest sha256, partition)."""
    if not uri.startswith(POOL_SCHEME):
        raise InvalidArgument(f"{uri!r} is not a pool URI (pool://HOST:PORT/MANIFEST_SHA256/PARTITION)")
    parts = uri[len(POOL_SCHEME) :].split("/")
    if len(parts) != 3 or not all(parts):
        raise InvalidArgument(f"{uri!r}: expected pool://HOST:PORT/MANIFEST_SHA256/PARTITION")
    address, manifest_sha, partition = parts
    return address, check_sha(manifest_sha), partition


def fetch_partition(uri: str, cache: Path) -> tuple[ModelPool, str, str]:
    """Fetches only the named partition's blobs (and its division manifest) from a remote pool into the local
    cache's blob store, verifying each; returns (local pool, division manifest sha256, partition), ready for
    :meth:`ModelPool.load_partition`, which loads straight from the verified blobs."""
    address, manifest_sha, partition = parse_pool_uri(uri)
    local = ModelPool(cache)
    client = PoolClient(address)
    try:
        client.fetch(manifest_sha, local.store)
        entry = local.division(manifest_sha).find(partition)
        if entry is None:
            raise NotFound(f"division {manifest_sha[:12]} in pool {address} has no partition {partition!r}")
        for file_sha in entry.files.values():
            client.fetch(file_sha, local.store)
    finally:
        client.close()
    return local, manifest_sha, partition


def pull_partition(uri: str, cache: Path) -> tuple[Path, str]:
    """:func:`fetch_partition`, then the partition written out as an artifact directory; returns the
    directory and its partition manifest sha256 (for tools that want files; nodes load from the blobs)."""
    local, manifest_sha, partition = fetch_partition(uri, cache)
    target = cache / "partitions" / manifest_sha[:16] / partition
    return target, local.export_partition(manifest_sha, partition, target)
