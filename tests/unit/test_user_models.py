"""Models users bring, divided from the command line: Hugging Face ``transformers`` built from tiny configs
(BERT-style encoder, GPT-2 with tied embeddings, ViT, T5 encoder) and ``torch.nn.TransformerEncoder`` with a
padding mask. Each divides into three partitions over three servers, the stored fp32 partitions run in a
chain match the whole model, and the fp16, bf16 and int8 variants build, with their drift reported.
ONNX twins are left out (``--no-onnx``): they triple the time and are tested with the ONNX package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from splitinfer.cli import main
from splitinfer.pool import ModelPool
from splitinfer.program import CompiledProgram, Program
from splitinfer.runtime import load_partition_artifact
from tests.unit import _user_models

pytest.importorskip("transformers")

MODELS = ["bert", "gpt2", "vit", "t5_encoder", "padded_encoder"]
#: Largest drift from fp32 accepted, relative to the largest output value (tiny random models).
DRIFT_LIMIT = {"fp16": 0.02, "bf16": 0.05, "int8": 0.05}


@pytest.fixture(scope="module")
def capacities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("caps") / "capacities.json"
    servers = [{"name": n, "flops": 1e10, "memory_bytes": 10**9} for n in ("edge", "metro", "cloud")]
    path.write_text(json.dumps({"servers": servers}))
    return path


def _stored_chain(pool: ModelPool, model: str, variant: str, tmp: Path) -> tuple[list[Program], list[str]]:
    sha = pool.resolve(model, variant, "default")
    manifest = pool.manifest(sha)
    programs, hosts = [], []
    for part in manifest["partitions"]:
        dest = tmp / f"{variant}-{part['name']}"
        partition_sha = pool.export_partition(sha, part["name"], dest)
        programs.append(load_partition_artifact(dest, partition_sha)[1])
        hosts.append(part["host"])
    return programs, hosts


def _run_chain(programs: list[Program], feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    values = dict(feeds)
    for program in programs:
        values.update(CompiledProgram(program)({name: values[name] for name in program.input_names}))
    return values


@pytest.mark.parametrize("name", MODELS)
def test_divides_from_the_cli_and_every_variant_builds(
    name: str, tmp_path: Path, capacities: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool_dir = tmp_path / "pool"
    code = main(
        ["divide", f"tests.unit._user_models:{name}", "--pool", str(pool_dir), "--variants", "fp32,fp16,bf16,int8",
         "--capacities", str(capacities), "--no-onnx"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    pool = ModelPool(pool_dir)
    model, kwargs = getattr(_user_models, name)()
    with torch.no_grad():
        expected = model(**kwargs)
    reference = expected if isinstance(expected, torch.Tensor) else next(iter(expected.values()))
    for variant in ("fp32", "fp16", "bf16", "int8"):
        programs, hosts = _stored_chain(pool, name, variant, tmp_path)
        assert len(programs) >= 3 and hosts == ["edge", "metro", "cloud"], (variant, hosts)
        manifest = pool.manifest(pool.resolve(name, variant, "default"))
        inputs = [spec.split(":")[0] for spec in manifest["inputs"]]
        assert inputs == list(kwargs)  # keyword inputs keep their names
        feeds = dict(kwargs)
        out = _run_chain(programs, feeds)
        first_output = manifest["outputs"][0].split(":")[0]
        if variant == "fp32":
            assert torch.allclose(out[first_output], reference, atol=1e-5, rtol=1e-5), name
        else:
            drift = float((out[first_output] - reference).abs().max() / reference.abs().max())
            assert drift < DRIFT_LIMIT[variant], (variant, drift)
    drifts = re.findall(r"drift from fp32 on the example: (.+)", printed)
    assert len(drifts) == 4 and drifts[0].startswith("none") and all("of the largest value" in d for d in drifts[1:])
    assert re.search(r"3 partitions; cuts of at most \d live tensors \(partitions by bound: <=1: \d", printed)
