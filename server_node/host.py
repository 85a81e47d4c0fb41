"""The partitions a node hosts, loaded and unloaded at run time, and the node's load."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from splitinfer.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from splitinfer.pool.pool import ModelPool
from splitinfer.runtime import LoadedPartition, PartitionKey, RuntimeOptions, read_partition_artifact

__all__ = ["PartitionHost"]


@dataclass
class _Slot:
    partition: LoadedPartition | None  # None while loading


class PartitionHost:
    """Thread-safe table of hosted partitions with admission control.

    ``admit`` bounds the requests in flight (RESOURCE_EXHAUSTED beyond ``max_in_flight``, counted in
    ``refused``); ``queue_length`` reports the runs waiting for or on a compute thread per partition (the
    compute pool's count, plugged in by the node).
    """

    def __init__(
        self,
        *,
        max_in_flight: int,
        queue_length: Callable[[str], int] = lambda key: 0,
        runtime: RuntimeOptions | None = None,
    ) -> None:
        #: How partitions run here (onnxruntime by default, the interpreter as fallback or when configured).
        self.runtime = runtime or RuntimeOptions()
        self._lock = threading.Lock()
        self._slots: dict[PartitionKey, _Slot] = {}
        self._max_in_flight = max_in_flight
        self._queue_length = queue_length
        self.in_flight = 0
        self.refused = 0

    def load(self, source: Path, expected: PartitionKey | None, manifest_sha256: str = "") -> LoadedPartition:
        """Loads an artifact; the artifact must be the partition ``expected`` names when given."""
        placeholder = expected is not None and self._mark_loading(expected)
        try:
            artifact = read_partition_artifact(source, manifest_sha256, with_onnx=self.runtime.runtime == "onnxruntime")
            key = artifact.key
            if expected is not None and key != expected:
                raise InvalidArgument(f"artifact at {source} holds partition {key}, not {expected}")
            loaded = LoadedPartition(
                key, artifact.program, onnx_model=artifact.onnx_model, onnx=artifact.onnx, options=self.runtime
            )
        except BaseException:
            if placeholder and expected is not None:
                with self._lock:
                    self._slots.pop(expected, None)
            raise
        self._install(loaded)
        return loaded

    def load_from_pool(
        self, pool: ModelPool, manifest_sha256: str, partition: str, expected: PartitionKey | None
    ) -> LoadedPartition:
        """Loads a partition straight from a pool's verified blobs (nothing rewritten or hashed twice)."""
        manifest = pool.division(manifest_sha256)
        key = PartitionKey(manifest.model, manifest.variant, partition)
        if expected is not None and key != expected:
            raise InvalidArgument(f"pool division {manifest_sha256[:12]} holds partition {key}, not {expected}")
        placeholder = self._mark_loading(key)
        try:
            loaded = pool.load_partition(manifest_sha256, partition, self.runtime)
        except BaseException:
            if placeholder:
                with self._lock:
                    self._slots.pop(key, None)
            raise
        self._install(loaded)
        return loaded

    def _install(self, loaded: LoadedPartition) -> None:
        with self._lock:
            previous = self._slots.get(loaded.key)
            self._slots[loaded.key] = _Slot(loaded)
        if previous is not None and previous.partition is not None:
            previous.partition.close()

    def _mark_loading(self, key: PartitionKey) -> bool:
        """Marks ``key`` as loading (requests get UNAVAILABLE) unless a ready copy is already hosted."""
        with self._lock:
            if key in self._slots:
                return False
            self._slots[key] = _Slot(None)
            return True

    def unload(self, key: PartitionKey) -> bool:
        with self._lock:
            slot = self._slots.pop(key, None)
        if slot is not None and slot.partition is not None:
            slot.partition.close()  # stops its batcher once the queued requests ran
        return slot is not None

    def get(self, key: PartitionKey) -> LoadedPartition:
        with self._lock:
            slot = self._slots.get(key)
        if slot is None:
            raise NotFound(f"partition {key} is not hosted on this node")
        if slot.partition is None:
            raise Unavailable(f"partition {key} is still loading")
        return slot.partition

    def hosted(self) -> list[tuple[LoadedPartition, int]]:
        """Loaded partitions with their queue lengths."""
        with self._lock:
            loaded = [s.partition for s in self._slots.values() if s.partition is not None]
        return [(p, self._queue_length(str(p.key))) for p in loaded]

    def enter(self) -> None:
        """Counts a request in flight; ResourceExhausted at ``max_in_flight``. Pair with :meth:`leave`."""
        with self._lock:
            if self.in_flight >= self._max_in_flight:
                self.refused += 1
                raise ResourceExhausted(
                    f"node is at its limit of {self._max_in_flight} requests in flight; retry later"
                )
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @contextmanager
    def admit(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()
