"""The pool's store and catalog: content addressing, atomic verified writes, sharing across models."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from splitinfer.divider import partition_at
from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.graph import ModelGraph
from splitinfer.pool import BlobStore, ModelPool
from splitinfer.program import export_program
from splitinfer.runtime import load_partition_artifact
from splitinfer.zoo import build


def test_blobs_are_content_addressed_and_verified(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sha = store.put_bytes(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest() and store.read(sha) == b"hello"
    assert store.put([b"hel", b"lo"], sha, 5) == (sha, True)
    with pytest.raises(InvalidArgument, match="declared"):
        store.put([b"other"], sha, 5)
    with pytest.raises(InvalidArgument, match="declared"):
        store.put([b"hello!"], "", 5)
    store.path(sha).write_bytes(b"HELLO")
    with pytest.raises(FailedPrecondition, match="corrupt"):
        store.read(sha)
    with pytest.raises(NotFound):
        store.read("0" * 64)
    with pytest.raises(InvalidArgument):
        store.read("../../etc/passwd")
    assert not [p for p in tmp_path.rglob(".incoming-*")]  # failed writes leave nothing behind


def _divide_at_backbone(name: str):  # type: ignore[no-untyped-def]
    model, example = build(name)
    graph = ModelGraph.build(export_program(model, example), example)
    backbone_end = max(i for i, n in enumerate(graph.nodes) if n.name == "relu_1") + 1
    return partition_at(graph, name, [backbone_end], ["edge", "cloud"])


def test_models_sharing_a_feature_extractor_share_the_partition(tmp_path: Path) -> None:
    pool = ModelPool(tmp_path)
    pool.add_division(_divide_at_backbone("shared_classifier"), variant="fp32", division_name="d", task="cls")
    sha = pool.add_division(_divide_at_backbone("shared_segmenter"), variant="fp32", division_name="d", task="seg")
    manifest = pool.manifest(sha)
    assert manifest["partitions"][0]["shared_with"] == ["shared_classifier@fp32/d/p0"]
    assert manifest["partitions"][1]["shared_with"] == []
    assert pool.shared_partitions() == [["shared_classifier@fp32/d/p0", "shared_segmenter@fp32/d/p0"]]
    # One stored copy serves both.
    files = manifest["partitions"][0]["files"]
    other = pool.manifest(pool.resolve("shared_classifier", "fp32", "d"))["partitions"][0]["files"]
    assert files == other


def test_catalog_records_variants_and_accuracy_provenance(tmp_path: Path) -> None:
    pool = ModelPool(tmp_path)
    division = _divide_at_backbone("shared_classifier")
    pool.add_division(division, variant="fp32", division_name="d", task="cls", accuracy=0.91, accuracy_measured=True)
    pool.add_division(division, variant="int8", division_name="d", task="cls", accuracy=0.9)
    entries = {e.variant: e for e in ModelPool(tmp_path).variants()}  # a fresh instance reads the same catalog
    assert entries["fp32"].accuracy_measured and not entries["int8"].accuracy_measured
    with pytest.raises(NotFound):
        pool.resolve("shared_classifier", "fp16", "d")


def test_exported_partition_loads_as_a_verified_artifact(tmp_path: Path) -> None:
    pool = ModelPool(tmp_path / "pool")
    sha = pool.add_division(_divide_at_backbone("shared_classifier"), variant="fp32", division_name="d")
    part_sha = pool.export_partition(sha, "p1", tmp_path / "p1")
    key, program = load_partition_artifact(tmp_path / "p1", part_sha)
    assert key.partition == "p1" and program.nodes
    with pytest.raises(NotFound):
        pool.export_partition(sha, "p9", tmp_path / "p9")


def test_several_models_for_one_task_are_alternatives(tmp_path: Path) -> None:
    from splitinfer.variants import make_variant
    from splitinfer.zoo import TASKS

    pool = ModelPool(tmp_path)
    task = "image-classification-32"
    for name in TASKS[task]:
        model, example = build(name)
        for kind in ("fp32", "int8"):
            program = make_variant(model, example, kind)
            graph = ModelGraph.build(program, example)
            pool.add_division(partition_at(graph, name, []), variant=kind, division_name="whole", task=task)
    choices = {(e.model, e.variant) for e in pool.alternatives(task)}
    assert choices == {(m, v) for m in TASKS[task] for v in ("fp32", "int8")}
    assert pool.alternatives("other") == []
