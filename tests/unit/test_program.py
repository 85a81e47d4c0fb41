"""Programs: export, run, cut, save/load with checksums, and refusal of tampered or malicious artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.program import CompiledProgram, export_program, load_program, save_program
from splitinfer.program.serde import GRAPH_FILE, WEIGHTS_FILE
from splitinfer.runtime import LoadedPartition, PartitionKey, load_partition_artifact, save_partition_artifact
from splitinfer.zoo import build


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return build("tiny_cnn")


@pytest.fixture(scope="module")
def program(tiny: tuple[torch.nn.Module, tuple[torch.Tensor, ...]]):  # type: ignore[no-untyped-def]
    return export_program(*tiny)


def test_exported_program_matches_the_model(tiny, program) -> None:  # type: ignore[no-untyped-def]
    model, (x,) = tiny
    out = CompiledProgram(program)({program.input_names[0]: x})
    assert torch.allclose(out[program.output_names[0]], model(x), atol=1e-6)


def test_every_chain_cut_gives_the_whole_output(tiny, program) -> None:  # type: ignore[no-untyped-def]
    model, (x,) = tiny
    expected = model(x)
    inp = program.input_names[0]
    for node in program.nodes[:-1]:
        head = program.subprogram([inp], [node.name])
        tail = program.subprogram([node.name], program.output_names)
        assert len(head.nodes) + len(tail.nodes) == len(program.nodes)
        mid = CompiledProgram(head)({inp: x})
        out = CompiledProgram(tail)(mid)[program.output_names[0]]
        assert torch.allclose(out, expected, atol=1e-6), node.name


def test_subprogram_refuses_an_invalid_cut(program) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match="depend on"):
        program.subprogram([program.nodes[3].name], [program.nodes[1].name])
    with pytest.raises(InvalidArgument, match="no tensor value"):
        program.subprogram(["nope"], program.output_names)


def test_save_and_load_round_trip(tmp_path: Path, tiny, program) -> None:  # type: ignore[no-untyped-def]
    model, (x,) = tiny
    sums = save_program(program, tmp_path)
    loaded = load_program(tmp_path, sums)
    assert loaded.nodes == program.nodes and loaded.inputs == program.inputs and loaded.outputs == program.outputs
    assert all(torch.equal(loaded.params[k], v) for k, v in program.params.items())
    out = CompiledProgram(loaded)({loaded.input_names[0]: x})[loaded.output_names[0]]
    # Same weights, possibly different alignment in memory, so float sums may differ in the last bit.
    assert torch.allclose(out, model(x), atol=1e-6)


def test_tampered_weights_are_refused(tmp_path: Path, program) -> None:  # type: ignore[no-untyped-def]
    sums = save_program(program, tmp_path)
    data = bytearray((tmp_path / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition, match="sha256"):
        load_program(tmp_path, sums)


def test_operators_outside_aten_are_refused(tmp_path: Path, program) -> None:  # type: ignore[no-untyped-def]
    save_program(program, tmp_path)
    graph = json.loads((tmp_path / GRAPH_FILE).read_text())
    graph["nodes"][0]["op"] = "os.system"
    (tmp_path / GRAPH_FILE).write_text(json.dumps(graph))
    with pytest.raises(InvalidArgument, match="not an aten operator"):
        load_program(tmp_path)


def test_missing_artifact_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_program(tmp_path)
    with pytest.raises(NotFound):
        load_partition_artifact(tmp_path)


def test_partition_artifact_checks_manifest_and_files(tmp_path: Path, program) -> None:  # type: ignore[no-untyped-def]
    key = PartitionKey("tiny_cnn", "fp32", "whole")
    sha = save_partition_artifact(program, key, tmp_path)
    loaded_key, loaded = load_partition_artifact(tmp_path, sha)
    assert loaded_key == key and len(loaded.nodes) == len(program.nodes)
    with pytest.raises(FailedPrecondition):
        load_partition_artifact(tmp_path, "0" * 64)
    (tmp_path / GRAPH_FILE).write_text((tmp_path / GRAPH_FILE).read_text() + " ")
    with pytest.raises(FailedPrecondition, match="sha256"):
        load_partition_artifact(tmp_path, sha)


def test_loaded_partition_checks_inputs(tiny, program) -> None:  # type: ignore[no-untyped-def]
    _, (x,) = tiny
    part = LoadedPartition(PartitionKey("m", "v", "p"), program)
    name = program.input_names[0]
    with pytest.raises(InvalidArgument, match="missing"):
        part.run({})
    with pytest.raises(InvalidArgument, match="must be"):
        part.run({name: x.double()})
    with pytest.raises(InvalidArgument, match="must be"):
        part.run({name: x[:, :2]})
    part.run({name: x})
    assert part.completed == 1 and part.mean_compute_ms > 0
