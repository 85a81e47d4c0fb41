"""Typed manifests: parsed once, round-tripped exactly, and malformed input refused as InvalidArgument only."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitinfer.divider import partition_at
from splitinfer.errors import InvalidArgument
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.pool.manifest import DivisionManifest, TensorSpec, parse_spec
from splitinfer.program import export_program
from splitinfer.zoo import build


def test_spec_text_round_trips_and_checks_shapes() -> None:
    spec = parse_spec("relu_3:float32[1, 64, 56, 56]")
    assert spec == TensorSpec("relu_3", "float32", (1, 64, 56, 56)) and spec.nbytes == 64 * 56 * 56 * 4
    assert parse_spec(str(spec)) == spec
    dynamic = parse_spec("x:float16[N, 3, 8]")
    assert dynamic.dynamic_batch and dynamic.shape == (1, 3, 8) and str(dynamic) == "x:float16[N, 3, 8]"
    assert dynamic.matches("float16", (7, 3, 8)) and not dynamic.matches("float16", (7, 3, 9))
    assert not dynamic.matches("float32", (1, 3, 8)) and not dynamic.matches("float16", (0, 3, 8))
    assert spec.matches("float32", (1, 64, 56, 56)) and not spec.matches("float32", (2, 64, 56, 56))
    assert parse_spec("scalar:int64[]").shape == ()
    for bad in ("x", "x:float32", "x:float99[1]", "x:float32[1, N]", ":float32[1]", "x:float32[-1]", "x:f[1]"):
        with pytest.raises(InvalidArgument):
            parse_spec(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_garbage_specs_raise_invalid_argument_only(text: str) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_spec(text)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))  # fmt: skip
def test_garbage_manifests_raise_invalid_argument_only(data: object) -> None:
    with contextlib.suppress(InvalidArgument):
        DivisionManifest.from_json(data)
    if isinstance(data, dict):
        with contextlib.suppress(InvalidArgument):
            DivisionManifest.from_json({**data, "format": "splitinfer.division/1"})


def test_pool_manifests_round_trip_exactly(tmp_path: Path) -> None:
    model, example = build("two_in_two_out")
    graph = ModelGraph.build(export_program(model, example), example)
    pool = ModelPool(tmp_path)
    sha = pool.add_division(partition_at(graph, "m", [len(graph.nodes) // 2]), variant="fp32", division_name="d")
    manifest = pool.division(sha)
    assert DivisionManifest.from_bytes(manifest.to_bytes()) == manifest
    assert manifest.to_bytes() == pool.store.read(sha)  # what the pool stored is exactly the typed form
    assert pool.manifest(sha) == json.loads(pool.store.read(sha))  # the dict view stays for older readers
    with pytest.raises(InvalidArgument):
        DivisionManifest.from_bytes(b"not json")
    broken = json.loads(pool.store.read(sha))
    broken["partitions"][0]["inputs"] = ["x:float32[1, oops]"]
    with pytest.raises(InvalidArgument, match="malformed tensor spec"):
        DivisionManifest.from_json(broken)
