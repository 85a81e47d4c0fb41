"""The Model Pool: models, their variants and divisions, as manifests over a content-addressed store.

A division manifest (format ``splitinfer.division/1``, JSON, itself a blob) lists each partition with its
input and output tensor specs, FLOPs, parameter bytes, successors (fan-out) and the sha256 of its files.
The catalog (``catalog.json``) maps model -> variant -> division name -> manifest sha256, with each
variant's accuracy and whether it was measured or declared.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitinfer.divider import Division
from splitinfer.errors import InvalidArgument, NotFound
from splitinfer.pool.store import BlobStore
from splitinfer.program.serde import GRAPH_FILE, WEIGHTS_FILE, save_program
from splitinfer.runtime import PartitionKey
from splitinfer.runtime.artifact import write_manifest

__all__ = ["DIVISION_FORMAT", "ModelPool", "VariantEntry"]

DIVISION_FORMAT = "splitinfer.division/1"


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
    ) -> str:
        """Stores every partition of ``division`` and its manifest; returns the manifest's sha256."""
        partitions: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            for spec in division.partitions:
                out = Path(tmp) / spec.name
                save_program(division.partition_program(spec.name), out)
                files = {name: self.store.put_bytes((out / name).read_bytes()) for name in (GRAPH_FILE, WEIGHTS_FILE)}
                partitions.append(
                    {
                        "name": spec.name,
                        "inputs": [str(s) for s in spec.inputs],
                        "outputs": [str(s) for s in spec.outputs],
                        "flops": spec.flops,
                        "param_bytes": spec.param_bytes,
                        "host": spec.host,
                        "successors": {v: list(to) for v, to in spec.successors},
                        "files": files,
                    }
                )
        known = self._partitions_by_files(exclude_model=division.model)
        for entry in partitions:
            fingerprint = tuple(sorted(entry["files"].values()))
            entry["shared_with"] = sorted(known.get(fingerprint, []))
        manifest = {
            "format": DIVISION_FORMAT,
            "model": division.model,
            "variant": variant,
            "division": division_name,
            "inputs": [str(s) for s in division.program.inputs],
            "outputs": [str(s) for s in division.program.outputs],
            "accuracy": accuracy,
            "accuracy_measured": accuracy_measured,
            "partitions": partitions,
        }
        sha = self.store.put_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode())
        with self._lock:
            catalog = self._read_catalog()
            model = catalog["models"].setdefault(division.model, {"task": task, "variants": {}})
            model["task"] = task or model["task"]
            entry = model["variants"].setdefault(variant, {"divisions": {}})
            entry.update(accuracy=accuracy, accuracy_measured=accuracy_measured)
            entry["divisions"][division_name] = sha
            self._write_catalog(catalog)
        return sha

    def _partitions_by_files(self, exclude_model: str = "") -> dict[tuple[str, ...], list[str]]:
        """Every stored partition by the hashes of its files: identical partitions of different models."""
        found: dict[tuple[str, ...], list[str]] = {}
        for entry in self.variants():
            if entry.model == exclude_model:
                continue
            for division, sha in entry.divisions.items():
                for part in self.manifest(sha)["partitions"]:
                    fingerprint = tuple(sorted(part["files"].values()))
                    found.setdefault(fingerprint, []).append(f"{entry.model}@{entry.variant}/{division}/{part['name']}")
        return found

    def shared_partitions(self) -> list[list[str]]:
        """Groups of partitions, from different models, that are the same artifact (one copy serves all)."""
        groups = [sorted(set(names)) for names in self._partitions_by_files().values()]
        return sorted(g for g in groups if len({n.split("@", 1)[0] for n in g}) > 1)

    def manifest(self, sha256: str) -> dict[str, Any]:
        """A division manifest, verified against its sha256."""
        try:
            data: dict[str, Any] = json.loads(self.store.read(sha256))
        except ValueError:
            raise InvalidArgument(f"blob {sha256} is not a JSON manifest") from None
        if data.get("format") != DIVISION_FORMAT:
            raise InvalidArgument(f"blob {sha256} is not a division manifest (format {data.get('format')!r})")
        return data

    def resolve(self, model: str, variant: str, division: str) -> str:
        for entry in self.variants(model):
            if entry.model == model and entry.variant == variant and division in entry.divisions:
                return entry.divisions[division]
        raise NotFound(f"no division {division!r} of {model}@{variant} in the pool")

    def export_partition(self, manifest_sha256: str, partition: str, dest: Path) -> str:
        """Writes one partition as a loadable artifact directory (verified blobs plus a partition manifest);
        returns the partition manifest's sha256, ready for LoadPartition."""
        manifest = self.manifest(manifest_sha256)
        entry = next((p for p in manifest["partitions"] if p["name"] == partition), None)
        if entry is None:
            raise NotFound(f"division {manifest_sha256[:12]} has no partition {partition!r}")
        dest.mkdir(parents=True, exist_ok=True)
        for name, sha in entry["files"].items():
            (dest / name).write_bytes(self.store.read(sha))
        key = PartitionKey(manifest["model"], manifest["variant"], partition)
        return write_manifest(dest, key, entry["inputs"], entry["outputs"], entry["files"])
