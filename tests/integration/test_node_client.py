"""The Node.js example client (@grpc/grpc-js + @grpc/proto-loader) against a live front-end."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integration._system import MODEL, small_system

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"


def test_node_client_sends_a_tensor_through_the_front_end(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("Node.js and the example's packages are needed: make install runs npm ci in examples/node")
    with small_system(tmp_path, variants=("fp32",)) as system:
        x = system.example
        (tmp_path / "input.json").write_text(json.dumps({"data": x.reshape(-1).tolist()}))
        done = subprocess.run(
            [node, str(EXAMPLE / "client.js"), "--address", system.frontend.address, "--model", MODEL,
             "--input", str(tmp_path / "input.json"), "--uplink-mbps", "1000"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        # It learnt the input from GetModelMetadata, and its plan keeps to the codecs it said it decodes.
        assert report["model_inputs"] == [
            {"name": system.input_name, "dtype": "DATA_TYPE_FLOAT32", "shape": list(x.shape)}
        ]
        assert report["variants"] == ["fp32"] and report["codecs"]
        assert all(c.endswith("+LOSSLESS_CODEC_NONE") for c in report["codecs"]), report["codecs"]
        [output] = report["outputs"]
        assert output["name"] == system.output_name
        got = np.array(output["values"], dtype=np.float32).reshape(output["shape"])
        with torch.no_grad():
            expected = system.model(x).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)  # the plan may pick a lossy codec
        assert system.frontend.store is not None
        assert system.frontend.store.get(report["request_id"]).model == MODEL

        # Without an input file it sends zeros of the shape it discovered.
        done = subprocess.run(
            [node, str(EXAMPLE / "client.js"), "--address", system.frontend.address, "--model", MODEL],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        [output] = json.loads(done.stdout)["outputs"]
        with torch.no_grad():
            expected = system.model(torch.zeros_like(x)).numpy()
        np.testing.assert_allclose(np.array(output["values"], dtype=np.float32).reshape(output["shape"]), expected,
                                   rtol=1e-2, atol=1e-2)  # fmt: skip

        # A model that is not in the pool: a clear NOT_FOUND, printed by the client.
        done = subprocess.run(
            [node, str(EXAMPLE / "client.js"), "--address", system.frontend.address, "--model", "nope",
             "--input", str(tmp_path / "input.json")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1
        assert "not in the pool" in done.stderr and "code 5" in done.stderr
