"""The ModelPoolService servicer and its client: artifacts streamed in chunks, verified by sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound, SplitInferError
from splitinfer.pool.pool import ModelPool
from splitinfer.pool.store import BlobStore, check_sha
from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.channel import open_channel
from splitinfer.transport.status import abort, error_from_rpc
from splitinfer.v1 import model_pool_pb2, model_pool_pb2_grpc

__all__ = ["ModelPoolServicer", "PoolClient", "parse_pool_uri", "pull_partition"]

CHUNK_BYTES = 1 << 20


class ModelPoolServicer(model_pool_pb2_grpc.ModelPoolServiceServicer):
    def __init__(self, pool: ModelPool) -> None:
        self._pool = pool

    def ListModels(
        self, request: model_pool_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> model_pool_pb2.ListModelsResponse:
        models: dict[str, model_pool_pb2.ModelInfo] = {}
        for entry in self._pool.variants(request.name_prefix):
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

    def FetchArtifact(
        self, request: model_pool_pb2.FetchArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[model_pool_pb2.FetchArtifactResponse]:
        try:
            sha = check_sha(request.sha256)
            chunks = self._pool.store.stream(sha)  # verifies the blob before the first byte goes out
            first = next(chunks, b"")
            size = self._pool.store.path(sha).stat().st_size
        except SplitInferError as exc:
            abort(context, exc)
        yield model_pool_pb2.FetchArtifactResponse(size_bytes=size, sha256=sha, data=first)
        for chunk in chunks:
            yield model_pool_pb2.FetchArtifactResponse(data=chunk)

    def PutArtifact(
        self, request_iterator: Iterator[model_pool_pb2.PutArtifactRequest], context: grpc.ServicerContext
    ) -> model_pool_pb2.PutArtifactResponse:
        try:
            first = next(request_iterator, None)
            if first is None:
                raise InvalidArgument("PutArtifact stream is empty")
            if not first.sha256:
                raise InvalidArgument("the first PutArtifact message must declare sha256 and size_bytes")

            def chunks() -> Iterator[bytes]:
                yield first.data
                for message in request_iterator:
                    yield message.data

            sha, present = self._pool.store.put(chunks(), first.sha256, first.size_bytes)
        except SplitInferError as exc:
            abort(context, exc)
        return model_pool_pb2.PutArtifactResponse(sha256=sha, already_present=present)


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


def pull_partition(uri: str, cache: Path) -> tuple[Path, str]:
    """Fetches only the named partition's files (and its division manifest) from a remote pool into the
    local cache, verifying each; returns the artifact directory and its partition manifest sha256."""
    address, manifest_sha, partition = parse_pool_uri(uri)
    local = ModelPool(cache)
    client = PoolClient(address)
    try:
        client.fetch(manifest_sha, local.store)
        manifest = local.manifest(manifest_sha)
        entry = next((p for p in manifest["partitions"] if p["name"] == partition), None)
        if entry is None:
            raise NotFound(f"division {manifest_sha[:12]} in pool {address} has no partition {partition!r}")
        for file_sha in entry["files"].values():
            client.fetch(file_sha, local.store)
    finally:
        client.close()
    target = cache / "partitions" / manifest_sha[:16] / partition
    return target, local.export_partition(manifest_sha, partition, target)
