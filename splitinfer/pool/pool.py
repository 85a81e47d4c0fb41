"""The Model Pool: models, their variants and divisions, as manifests over a content-addressed store.

A division manifest (format ``splitinfer.division/1``, JSON, itself a blob) lists each partition with its
input and output tensor specs, FLOPs, parameter bytes, successors (fan-out) and the sha256 of its files.
The catalog (``catalog.json``) maps model -> variant -> division name -> manifest sha256, with each
variant's accuracy and whether it was measured or declared.

Each partition also gets an ONNX twin (``model.onnx``, sha256-pinned beside the program) exported and
checked against the interpreter when the division is added; a partition ONNX cannot handle records why in
its ``onnx.reason`` and runs on the interpreter. Manifests are read through
:class:`~splitinfer.pool.manifest.DivisionManifest` (:meth:`ModelPool.division`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from splitinfer.divider import Division
from splitinfer.errors import InvalidArgument, NotFound
from splitinfer.pool.manifest import DIVISION_FORMAT, DivisionManifest, OnnxInfo, PartitionEntry, TensorSpec
from splitinfer.pool.store import BlobStore
from splitinfer.program import CompiledProgram, Program, ValueSpec
from splitinfer.program.serde import GRAPH_FILE, WEIGHTS_FILE, dtype_name, program_from_json, save_program
from splitinfer.runtime import LoadedPartition, PartitionKey, RuntimeOptions
from splitinfer.runtime.artifact import manifest_bytes, write_manifest

__all__ = ["DIVISION_FORMAT", "ModelPool", "VariantEntry"]

#: Calibration and check samples drawn when the caller gives none (seeded: a division is reproducible).
DEFAULT_SAMPLES = 4


def random_samples(program: Program, count: int = DEFAULT_SAMPLES, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Model inputs to calibrate and check ONNX partitions on when no real ones are given: standard normal
    floats, zeros for integer inputs (token ids 0 are valid for every vocabulary)."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        feeds = {}
        for spec in program.inputs:
            if spec.dtype.is_floating_point:
                feeds[spec.name] = torch.randn(spec.shape, generator=generator).to(spec.dtype)
            else:
                feeds[spec.name] = torch.zeros(spec.shape, dtype=spec.dtype)
        samples.append(feeds)
    return samples


def partition_samples(
    division: Division, samples: Sequence[Mapping[str, torch.Tensor]]
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Each partition's inputs as the whole model computes them from ``samples`` (one interpreter run each)."""
    program = division.program
    model_inputs = set(program.input_names)
    needed = list(dict.fromkeys(s.name for p in division.partitions for s in p.inputs if s.name not in model_inputs))
    inner = CompiledProgram(program.subprogram(program.input_names, needed)) if needed else None
    found: dict[str, list[dict[str, torch.Tensor]]] = {p.name: [] for p in division.partitions}
    for sample in samples:
        values = dict(sample)
        if inner is not None:
            values.update(inner(sample))
        for p in division.partitions:
            found[p.name].append({s.name: values[s.name] for s in p.inputs})
    return found


@dataclass(frozen=True, slots=True)
class VariantEntry:
    model: str
    task: str
    variant: str
    accuracy: float
    accuracy_measured: bool
    divisions: dict[str, str]


class ModelPool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = BlobStore(root)
        self._catalog_path = root / "catalog.json"
        self._lock = threading.Lock()

    # --- catalog -------------------------------------------------------------------------------------------

    def _read_catalog(self) -> dict[str, Any]:
        if not self._catalog_path.is_file():
            return {"format": "splitinfer.catalog/1", "models": {}}
        data: dict[str, Any] = json.loads(self._catalog_path.read_text())
        return data

    def _write_catalog(self, catalog: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".catalog-")
        with os.fdopen(fd, "w") as f:
            json.dump(catalog, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._catalog_path)

    def variants(self, name_prefix: str = "") -> list[VariantEntry]:
        catalog = self._read_catalog()
        entries = []
        for model, info in sorted(catalog["models"].items()):
            if not model.startswith(name_prefix):
                continue
            for variant, v in sorted(info["variants"].items()):
                entries.append(
                    VariantEntry(model, info["task"], variant, v["accuracy"], v["accuracy_measured"], v["divisions"])
                )
        return entries

    def alternatives(self, task: str) -> list[VariantEntry]:
        """Every variant of every model that solves ``task``: the choices a planner has for a request."""
        return [e for e in self.variants() if e.task == task]

    # --- divisions -----------------------------------------------------------------------------------------

    def add_division(
        self,
        division: Division,
        *,
        variant: str,
        division_name: str,
        task: str = "",
        accuracy: float = 0.0,
        accuracy_measured: bool = False,
        onnx: bool = True,
        samples: Sequence[Mapping[str, torch.Tensor]] | None = None,
    ) -> str:
        """Stores every partition of ``division`` (program and, with ``onnx``, its checked ONNX twin) and its
        manifest; returns the manifest's sha256.

        ``samples``: model inputs to calibrate int8 ONNX partitions on and to check every ONNX partition
        against the interpreter with (real data where the caller has it; seeded random inputs otherwise).
        """
        from splitinfer.onnx import ONNX_FILE, build_partition_onnx

        per_partition = partition_samples(division, samples or random_samples(division.program)) if onnx else {}
        entries: list[PartitionEntry] = []
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            for spec in division.partitions:
                out = Path(tmp) / spec.name
                program = division.partition_program(spec.name)
                save_program(program, out)
                files = {name: self.store.put_bytes((out / name).read_bytes()) for name in (GRAPH_FILE, WEIGHTS_FILE)}
                info = OnnxInfo(reason="ONNX export was not asked for")
                if onnx:
                    model, info = build_partition_onnx(program, variant, per_partition[spec.name])
                    if model is not None:
                        files[ONNX_FILE] = self.store.put_bytes(model)
                entries.append(
                    PartitionEntry(
                        name=spec.name,
                        inputs=tuple(_spec(s, info.dynamic_batch) for s in spec.inputs),
                        outputs=tuple(_spec(s, info.dynamic_batch) for s in spec.outputs),
                        flops=spec.flops,
                        param_bytes=spec.param_bytes,
                        host=spec.host,
                        successors={v: tuple(to) for v, to in spec.successors},
                        files=files,
                        onnx=info,
                    )
                )
        known = self._partitions_by_files(exclude_model=division.model)
        entries = [dataclasses.replace(e, shared_with=tuple(sorted(known.get(e.fingerprint, [])))) for e in entries]
        manifest = DivisionManifest(
            model=division.model,
            variant=variant,
            division=division_name,
            inputs=tuple(_spec(s, False) for s in division.program.inputs),
            outputs=tuple(_spec(s, False) for s in division.program.outputs),
            accuracy=accuracy,
            accuracy_measured=accuracy_measured,
            partitions=tuple(entries),
            postprocess=division.postprocess,
        )
        sha = self.store.put_bytes(manifest.to_bytes())
        with self._lock:
            catalog = self._read_catalog()
            model = catalog["models"].setdefault(division.model, {"task": task, "variants": {}})
            model["task"] = task or model["task"]
            entry = model["variants"].setdefault(variant, {"divisions": {}})
            entry.update(accuracy=accuracy, accuracy_measured=accuracy_measured)
            entry["divisions"][division_name] = sha
            self._write_catalog(catalog)
        return sha

    def set_division(self, model: str, variant: str, division_name: str, sha256: str) -> None:
        """Points ``division_name`` of ``model@variant`` at a manifest already in the pool (the division
        controller moves "default" from version to version this way): one atomic catalog write, so a reader
        sees the old division or the new one, never a mix."""
        manifest = self.division(sha256)
        if (manifest.model, manifest.variant) != (model, variant):
            raise InvalidArgument(f"manifest {sha256} is a division of {manifest.model}@{manifest.variant}, "
                                  f"not of {model}@{variant}")  # fmt: skip
        with self._lock:
            catalog = self._read_catalog()
            entry = catalog["models"].get(model, {}).get("variants", {}).get(variant)
            if entry is None:
                raise NotFound(f"{model}@{variant} is not in the pool")
            entry["divisions"][division_name] = sha256
            self._write_catalog(catalog)

    def _partitions_by_files(self, exclude_model: str = "") -> dict[tuple[str, ...], list[str]]:
        """Every stored partition by the hashes of its files: identical partitions of different models."""
        found: dict[tuple[str, ...], list[str]] = {}
        for entry in self.variants():
            if entry.model == exclude_model:
                continue
            for division, sha in entry.divisions.items():
                for part in self.division(sha).partitions:
                    name = f"{entry.model}@{entry.variant}/{division}/{part.name}"
                    found.setdefault(part.fingerprint, []).append(name)
        return found

    def shared_partitions(self) -> list[list[str]]:
        """Groups of partitions, from different models, that are the same artifact (one copy serves all)."""
        groups = [sorted(set(names)) for names in self._partitions_by_files().values()]
        return sorted(g for g in groups if len({n.split("@", 1)[0] for n in g}) > 1)

    def division(self, sha256: str) -> DivisionManifest:
        """A division manifest, verified against its sha256, parsed into typed data."""
        try:
            return DivisionManifest.from_bytes(self.store.read(sha256))
        except InvalidArgument as exc:
            raise InvalidArgument(f"blob {sha256}: {exc}") from None

    def manifest(self, sha256: str) -> dict[str, Any]:
        """A division manifest as JSON data (verified and parsed through :meth:`division` first)."""
        return self.division(sha256).to_json()

    def resolve(self, model: str, variant: str, division: str) -> str:
        for entry in self.variants(model):
            if entry.model == model and entry.variant == variant and division in entry.divisions:
                return entry.divisions[division]
        raise NotFound(f"no division {division!r} of {model}@{variant} in the pool")

    def export_partition(self, manifest_sha256: str, partition: str, dest: Path) -> str:
        """Writes one partition as a loadable artifact directory (verified blobs plus a partition manifest);
        returns the partition manifest's sha256, ready for LoadPartition."""
        manifest = self.division(manifest_sha256)
        entry = manifest.find(partition)
        if entry is None:
            raise NotFound(f"division {manifest_sha256[:12]} has no partition {partition!r}")
        dest.mkdir(parents=True, exist_ok=True)
        for name, sha in entry.files.items():
            (dest / name).write_bytes(self.store.read(sha))
        key = PartitionKey(manifest.model, manifest.variant, partition)
        return write_manifest(
            dest,
            key,
            [str(s.with_batch(False)) for s in entry.inputs],
            [str(s.with_batch(False)) for s in entry.outputs],
            dict(entry.files),
            entry.onnx,
        )

    def partition_manifest_sha(self, manifest_sha256: str, partition: str) -> str:
        """The sha256 of the partition manifest :meth:`export_partition` would write (the artifact's name),
        computed without writing anything."""
        manifest = self.division(manifest_sha256)
        entry = manifest.find(partition)
        if entry is None:
            raise NotFound(f"division {manifest_sha256[:12]} has no partition {partition!r}")
        data = manifest_bytes(
            PartitionKey(manifest.model, manifest.variant, partition),
            [str(s.with_batch(False)) for s in entry.inputs],
            [str(s.with_batch(False)) for s in entry.outputs],
            dict(entry.files),
            entry.onnx,
        )
        return hashlib.sha256(data).hexdigest()

    def load_partition(
        self, manifest_sha256: str, partition: str, options: RuntimeOptions | None = None
    ) -> LoadedPartition:
        """A partition straight from the pool's verified blobs: nothing rewritten or hashed twice."""
        options = options or RuntimeOptions()
        manifest = self.division(manifest_sha256)
        entry = manifest.find(partition)
        if entry is None:
            raise NotFound(f"division {manifest_sha256[:12]} has no partition {partition!r}")
        for name in (GRAPH_FILE, WEIGHTS_FILE):
            if name not in entry.files:
                raise InvalidArgument(f"partition {partition!r} of {manifest_sha256[:12]} lists no {name}")
        try:
            graph = json.loads(self.store.read(entry.files[GRAPH_FILE]))
            params = safetensors.torch.load(self.store.read(entry.files[WEIGHTS_FILE]))
        except (ValueError, safetensors.SafetensorError) as exc:
            raise InvalidArgument(f"partition {partition!r} of {manifest_sha256[:12]} is malformed: {exc}") from None
        program = program_from_json(graph, params)
        model = None
        if options.runtime == "onnxruntime" and entry.onnx.available:
            model = self.store.read(entry.files[entry.onnx.file])
        key = PartitionKey(manifest.model, manifest.variant, partition)
        return LoadedPartition(key, program, onnx_model=model, onnx=entry.onnx, options=options)


def _spec(spec: ValueSpec, dynamic_batch: bool) -> TensorSpec:
    return TensorSpec(spec.name, dtype_name(spec.dtype), spec.shape, dynamic_batch)
