"""ONNX twins of partitions: exported for every zoo model and variant, checked at division time, run on
onnxruntime beside the interpreter and eager torch; fallback, providers, tampering, symbolic batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from splitinfer.divider import partition_at
from splitinfer.errors import FailedPrecondition, InvalidArgument
from splitinfer.graph import ModelGraph
from splitinfer.onnx import TOLERANCES, build_partition_onnx, onnx_name
from splitinfer.pool import ModelPool
from splitinfer.program import CompiledProgram
from splitinfer.runtime import LoadedPartition, OrtOptions, RuntimeOptions, load_partition, read_partition_artifact
from splitinfer.variants import VARIANT_KINDS, make_variant
from splitinfer.zoo import ZOO, build

INTERPRETER = RuntimeOptions(runtime="interpreter")


def _divided(
    pool: ModelPool, name: str, kind: str, cuts: int = 2
) -> tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]:
    model, example = build(name)
    program = make_variant(model, example, kind)
    graph = ModelGraph.build(program, example)
    n = len(graph.nodes)
    division = partition_at(graph, name, [n * k // cuts for k in range(1, cuts)])
    sha = pool.add_division(division, variant=kind, division_name="default")
    return sha, model, example


def _chain(pool: ModelPool, sha: str, feeds: dict[str, torch.Tensor], options: RuntimeOptions) -> dict[str, Any]:
    manifest = pool.division(sha)
    values = dict(feeds)
    runtimes = []
    for entry in manifest.partitions:
        part = pool.load_partition(sha, entry.name, options)
        runtimes.append(part.runtime)
        values.update(part.run({s.name: values[s.name] for s in part.inputs}))
    return {"outputs": {n: values[n] for n in manifest.output_names}, "runtimes": runtimes}


@pytest.mark.parametrize("kind", VARIANT_KINDS)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_ort_matches_interpreter_and_eager_for_every_zoo_model_and_variant(
    tmp_path: Path, name: str, kind: str
) -> None:
    pool = ModelPool(tmp_path)
    sha, model, example = _divided(pool, name, kind)
    manifest = pool.division(sha)
    feeds = dict(zip(manifest.input_names, example, strict=True))
    ort = _chain(pool, sha, feeds, RuntimeOptions())
    ref = _chain(pool, sha, feeds, INTERPRETER)
    assert set(ref["runtimes"]) == {"interpreter"}
    for entry in manifest.partitions:
        if entry.onnx.available:
            assert entry.onnx.opset >= 17 and entry.files[entry.onnx.file]
            assert entry.onnx.max_abs_error <= entry.onnx.tolerance
        else:
            assert entry.onnx.reason  # says why it runs on the interpreter
    assert ort["runtimes"] == ["onnxruntime" if e.onnx.available else "interpreter" for e in manifest.partitions]
    if kind in ("fp32", "fp16", "int8"):
        # onnxruntime has CPU kernels for these: every partition of the zoo exports and runs on it.
        assert set(ort["runtimes"]) == {"onnxruntime"}, [e.onnx.reason for e in manifest.partitions]
    with torch.no_grad():
        eager = model(*example)
    eager_list = list(eager) if isinstance(eager, tuple | list) else [eager]
    atol, rtol = TOLERANCES[kind]
    for i, out_name in enumerate(manifest.output_names):
        a, b = ort["outputs"][out_name].float(), ref["outputs"][out_name].float()
        scale = float(b.abs().max())
        # Errors compound over the partitions: twice the per-partition bound.
        assert float((a - b).abs().max()) <= 2 * (atol + rtol * scale), out_name
        if kind == "fp32":
            torch.testing.assert_close(a, eager_list[i].float(), rtol=1e-4, atol=1e-4)


def test_int8_onnx_computes_in_int8(tmp_path: Path) -> None:
    import onnx

    pool = ModelPool(tmp_path)
    for name in ("tiny_cnn", "transformer"):
        sha, _, _ = _divided(pool, name, "int8", cuts=1)
        (entry,) = pool.division(sha).partitions
        model = onnx.load_from_string(pool.store.read(entry.files[entry.onnx.file]))
        ops = {n.op_type for n in model.graph.node}
        int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert int8_weights, name
        if name == "tiny_cnn":
            assert "static-qdq:conv" in entry.onnx.quantization and "QuantizeLinear" in ops
        assert "dynamic:" in entry.onnx.quantization and "MatMulInteger" in ops, (name, sorted(ops))


def test_a_partition_onnx_cannot_run_falls_back_and_still_serves(tmp_path: Path) -> None:
    pool = ModelPool(tmp_path)
    sha, _, example = _divided(pool, "tiny_cnn", "bf16")  # onnxruntime has no bf16 convolution on CPU
    manifest = pool.division(sha)
    assert all(not e.onnx.available and "failed" in e.onnx.reason for e in manifest.partitions)
    assert all("model.onnx" not in e.files for e in manifest.partitions)
    part = pool.load_partition(sha, manifest.partitions[0].name)
    assert part.runtime == "interpreter" and part.fallback_reason == manifest.partitions[0].onnx.reason
    out = _chain(pool, sha, dict(zip(manifest.input_names, example, strict=True)), RuntimeOptions())
    assert out["runtimes"] == ["interpreter", "interpreter"]


def test_export_out_of_tolerance_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import splitinfer.onnx.build as build_module

    model, example = build("tiny_cnn")
    program = make_variant(model, example, "fp32")
    monkeypatch.setitem(build_module.TOLERANCES, "fp32", (0.0, 0.0))
    noisy = [{program.input_names[0]: example[0] * 1e3}]
    data, info = build_partition_onnx(program, "fp32", noisy)
    assert data is None and "check against the interpreter failed" in info.reason


def test_onnx_blob_is_verified_and_names_are_mapped(tmp_path: Path) -> None:
    pool = ModelPool(tmp_path)
    sha, _, _ = _divided(pool, "two_in_two_out", "fp32")
    entry = pool.division(sha).partitions[0]
    assert set(entry.onnx.names) == {s.name for s in (*entry.inputs, *entry.outputs)}
    assert all(onnx_name(k) == v for k, v in entry.onnx.names.items())
    assert onnx_name("getitem[0]") == "getitem_0_" and onnx_name("3d") == "t_3d"
    dest = tmp_path / "export"
    part_sha = pool.export_partition(sha, entry.name, dest)
    assert load_partition(dest, part_sha).runtime == "onnxruntime"
    (dest / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(FailedPrecondition, match="does not match"):
        read_partition_artifact(dest, part_sha)
    # An interpreter node never reads the ONNX file at all.
    assert load_partition(dest, part_sha, INTERPRETER).runtime == "interpreter"
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["onnx"]["file"] = "elsewhere.onnx"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidArgument, match="not among the pinned files"):
        read_partition_artifact(dest)


def test_execution_providers_are_selected_and_checked(tmp_path: Path) -> None:
    pool = ModelPool(tmp_path)
    sha, _, _ = _divided(pool, "tiny_cnn", "fp32", cuts=1)
    options = RuntimeOptions(ort=OrtOptions(providers=("cpu",), intra_op_threads=1, inter_op_threads=1))
    part = pool.load_partition(sha, "p0", options)
    assert part.providers == ("CPUExecutionProvider",)
    with pytest.raises(FailedPrecondition, match=r"\['cuda'\] are not available"):
        pool.load_partition(sha, "p0", RuntimeOptions(ort=OrtOptions(providers=("cuda", "cpu"))))
    with pytest.raises(InvalidArgument, match="unknown execution providers"):
        OrtOptions(providers=("tpu",))
    with pytest.raises(InvalidArgument):
        RuntimeOptions(runtime="tensorflow")


def test_symbolic_batch_accepts_any_batch_and_checks_every_other_dimension(tmp_path: Path) -> None:
    pool = ModelPool(tmp_path)
    sha, _, example = _divided(pool, "tiny_cnn", "fp32")
    entry = pool.division(sha).partitions[0]
    assert entry.onnx.dynamic_batch and entry.inputs[0].dynamic_batch
    assert str(entry.inputs[0]).endswith("[N, 3, 32, 32]")
    part = pool.load_partition(sha, entry.name)
    (x,) = example
    batch = torch.cat([x, x * 2, x - 1])
    out = part.run({entry.inputs[0].name: batch})
    single = CompiledProgram(part.program)
    for row in range(3):
        ref = single({entry.inputs[0].name: batch[row : row + 1]})
        for name, value in ref.items():
            torch.testing.assert_close(out[name][row : row + 1], value, rtol=1e-4, atol=1e-4)
    with pytest.raises(InvalidArgument, match="any batch size"):
        part.run({entry.inputs[0].name: torch.randn(2, 3, 32, 31)})
    with pytest.raises(InvalidArgument):
        part.run({entry.inputs[0].name: torch.randn(0, 3, 32, 32)})
    # The interpreter runs the exported shape only.
    strict = pool.load_partition(sha, entry.name, INTERPRETER)
    with pytest.raises(InvalidArgument, match=r"must be .*\[1, 3, 32, 32\]"):
        strict.run({entry.inputs[0].name: batch})


def test_attention_partition_keeps_a_static_batch(tmp_path: Path) -> None:
    pool = ModelPool(tmp_path)
    sha, _, example = _divided(pool, "transformer", "fp32", cuts=1)
    (entry,) = pool.division(sha).partitions
    assert entry.onnx.available and not entry.onnx.dynamic_batch and "static batch" in entry.onnx.reason
    part = pool.load_partition(sha, entry.name)
    with pytest.raises(InvalidArgument):
        part.run({entry.inputs[0].name: torch.cat([example[0], example[0]])})
    assert isinstance(part, LoadedPartition) and part.run({entry.inputs[0].name: example[0]})


def test_an_onnx_model_reaching_for_files_is_refused(tmp_path: Path) -> None:
    """Models load from verified bytes, never a path: an initializer stored as external data (a relative or
    absolute file name an attacker chose) cannot be read."""
    import numpy as np
    from onnx import TensorProto, helper

    from splitinfer.runtime.ort import OrtSession

    (tmp_path / "secret.bin").write_bytes(b"\x00\x00\x80\x3f")
    for location in ("secret.bin", str(tmp_path / "secret.bin"), "../../etc/passwd"):
        weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("length", "4")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            [weight],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
        with pytest.raises(InvalidArgument, match="cannot load"):
            OrtSession(model, {"x": "x", "y": "y"}, OrtOptions()).run({"x": np.zeros(1, np.float32)})


def test_an_export_failure_is_recorded_and_the_partition_still_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter raising (an operator it has no translation for, say) leaves the partition on the
    interpreter with the exporter's message in the manifest."""
    import splitinfer.onnx.build as build_module

    def refuse(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no ONNX translation for aten.some_new_op")

    monkeypatch.setattr(build_module, "export_onnx", refuse)
    pool = ModelPool(tmp_path)
    sha, model, example = _divided(pool, "residual_cnn", "fp32")
    manifest = pool.division(sha)
    for entry in manifest.partitions:
        assert not entry.onnx.available
        assert entry.onnx.reason == "export failed: RuntimeError: no ONNX translation for aten.some_new_op"
    out = _chain(pool, sha, dict(zip(manifest.input_names, example, strict=True)), RuntimeOptions())
    assert out["runtimes"] == ["interpreter", "interpreter"]
    with torch.no_grad():
        torch.testing.assert_close(out["outputs"][manifest.output_names[0]], model(*example), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("runtime", ["onnxruntime", "interpreter"])
def test_a_warm_up_runs_once_on_zeros_and_counts_nowhere(tmp_path: Path, runtime: str) -> None:
    """The agent warms each partition at load (a cold cost): one run on zero inputs of its specs, outside
    the partition's statistics; real inputs run as before."""
    pool = ModelPool(tmp_path)
    sha, model, example = _divided(pool, "tiny_cnn", "fp32", cuts=1)
    part = pool.load_partition(sha, pool.division(sha).partitions[0].name, RuntimeOptions(runtime=runtime))
    assert part.runtime == runtime
    assert part.warm_up() and part.completed == 0 and part.mean_compute_ms == 0.0
    (out,) = part.run({s.name: t for s, t in zip(part.inputs, example, strict=True)}).values()
    with torch.no_grad():
        assert torch.allclose(out, model(*example), atol=1e-4)
    assert part.completed == 1
