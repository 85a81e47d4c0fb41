"""Programs: export, run, cut, save/load with checksums, and refusal of tampered or malicious artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from splitinfer.errors import FailedPrecondition, InvalidArgument, NotFound
from splitinfer.program import CompiledProgram, example_feeds, export_program, load_program, save_program
from splitinfer.program.interpreter import resolve_op
from splitinfer.program.operators import ALLOWED_OPERATORS, OPERATOR_SET, torch_release
from splitinfer.program.serde import FORMAT, GRAPH_FILE, WEIGHTS_FILE, sha256_file
from splitinfer.runtime import LoadedPartition, PartitionKey, load_partition_artifact, save_partition_artifact
from splitinfer.runtime.artifact import write_manifest
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
    graph["operators"] = sorted({n["op"] for n in graph["nodes"]})
    (tmp_path / GRAPH_FILE).write_text(json.dumps(graph))
    with pytest.raises(InvalidArgument, match=r"'os\.system' is not on splitinfer's allow-list"):
        load_program(tmp_path)


def _hand_made_reader(tmp_path: Path, secret: Path) -> Path:
    """A program.json a hostile pool could serve: one node, aten.from_file, reading a file of the host."""
    graph = {
        "format": FORMAT,
        "torch": torch.__version__,
        "operator_set": OPERATOR_SET,
        "operators": ["aten.from_file.default"],
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
        "outputs": [{"name": "leak", "dtype": "uint8", "shape": [16]}],
        "params": [],
        "nodes": [
            {
                "name": "leak",
                "op": "aten.from_file.default",
                "args": [str(secret)],
                "kwargs": {"shared": False, "size": 16, "dtype": {"dtype": "uint8"}},
                "outputs": [{"name": "leak", "dtype": "uint8", "shape": [16]}],
            }
        ],
    }
    directory = tmp_path / "hostile"
    directory.mkdir()
    (directory / GRAPH_FILE).write_text(json.dumps(graph))
    safetensors.torch.save_file({}, str(directory / WEIGHTS_FILE))
    return directory


def test_a_program_reading_a_file_is_refused_at_load(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    assert torch.ops.aten.from_file.default(str(secret), shared=False, size=4, dtype=torch.uint8).numel() == 4
    directory = _hand_made_reader(tmp_path, secret)
    with pytest.raises(InvalidArgument, match=r"'aten\.from_file\.default' is not on splitinfer's allow-list"):
        load_program(directory)
    key = PartitionKey("hostile", "fp32", "p0")
    graph_sha, weights_sha = (sha256_file(directory / f) for f in (GRAPH_FILE, WEIGHTS_FILE))
    sha = write_manifest(
        directory, key, ["x:float32[1]"], ["leak:uint8[16]"], {GRAPH_FILE: graph_sha, WEIGHTS_FILE: weights_sha}
    )
    with pytest.raises(InvalidArgument, match="from_file"):
        load_partition_artifact(directory, sha)
    with pytest.raises(InvalidArgument, match="allow-list"):
        resolve_op("aten.from_file.default")
    assert "aten.from_file.default" not in ALLOWED_OPERATORS


def test_a_program_from_another_torch_or_operator_set_is_refused(tmp_path: Path, program) -> None:  # type: ignore[no-untyped-def]
    save_program(program, tmp_path)
    graph = json.loads((tmp_path / GRAPH_FILE).read_text())
    assert graph["torch"] == torch.__version__ and graph["operator_set"] == OPERATOR_SET
    assert graph["operators"] == sorted({n.op for n in program.nodes})
    for field, value, error, match in (
        ("torch", "1.13.1", FailedPrecondition, "torch 1.13.1"),
        ("torch", "banana", InvalidArgument, "malformed torch version"),
        ("torch", None, InvalidArgument, "must be strings"),
        ("operator_set", "splitinfer.aten/99", FailedPrecondition, "operator set"),
        ("operators", ["aten.relu.default"], InvalidArgument, "operator record"),
        ("format", "splitinfer.program/1", InvalidArgument, "format"),
    ):
        changed = dict(graph, **{field: value})
        (tmp_path / GRAPH_FILE).write_text(json.dumps(changed))
        with pytest.raises(error, match=match):
            load_program(tmp_path)
    patch = dict(graph, torch=f"{torch_release()}.99+other")
    (tmp_path / GRAPH_FILE).write_text(json.dumps(patch))
    assert len(load_program(tmp_path).nodes) == len(program.nodes)  # another patch release of this torch loads


def test_export_refuses_an_operator_off_the_list() -> None:
    class Sorts(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sort(x).values

    with pytest.raises(InvalidArgument, match=r"aten\.sort\.\w+ .*module \(root\) \(Sorts\).*allow-list"):
        export_program(Sorts(), (torch.randn(4),))


class _Structured(torch.nn.Module):
    def forward(self, x: torch.Tensor, scale: torch.Tensor, extra: dict[str, torch.Tensor]) -> dict[str, object]:
        return {"sum": x * scale + extra["bias"], "parts": [x * 2, extra["tag"]], "same": x * 2}


def test_keyword_and_dict_inputs_and_structured_outputs() -> None:
    model = _Structured()
    x, scale = torch.randn(2, 3), torch.randn(2, 3)
    extra = {"tag": torch.randn(4), "bias": torch.randn(2, 3)}
    kwargs = {"extra": extra, "scale": scale}
    program = export_program(model, (x,), kwargs)
    feeds = example_feeds(program, (x,), kwargs)
    assert list(feeds) == program.input_names and len(feeds) == 4
    assert program.output_names == ["sum", "parts.0", "parts.1", "same"]  # key paths, stable
    out = CompiledProgram(program)(feeds)
    expected = model(x, **kwargs)
    assert torch.equal(out["sum"], expected["sum"]) and torch.equal(out["parts.0"], expected["parts"][0])
    assert torch.equal(out["parts.1"], extra["tag"])  # a pass-through input, copied into an output of its own
    assert torch.equal(out["same"], expected["same"])
    again = export_program(model, (x,), {"scale": scale, "extra": extra})  # kwargs in another order
    assert again.output_names == program.output_names
    assert torch.equal(
        CompiledProgram(again)(example_feeds(again, (x,), {"scale": scale, "extra": extra}))["sum"], out["sum"]
    )
    with pytest.raises(InvalidArgument, match="the program takes 4"):
        example_feeds(program, (x,), {})


def test_data_dependent_shapes_are_refused_with_a_hint() -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0]

    with pytest.raises(InvalidArgument, match="data-dependent shape"):
        export_program(DataDependent(), (torch.randn(5),))


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
