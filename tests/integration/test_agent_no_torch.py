"""The edge agent without PyTorch: in a venv where splitinfer was installed as a device installs it
(``pip install '<checkout>[agent]'``, dependencies resolved by pip; torch not importable, and asserted so),
the installed agent runs the head and the tail partitions on onnxruntime with numpy codecs, against real
node processes that run the partitions in between; the commands that need the server install say so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.client import NodeClient
from server_node.process import spawn_node
from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.runtime import PartitionKey
from splitinfer.zoo import build

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from agent_venv import ensure  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


_ENV = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH: the installed package runs, not this checkout


def _agent(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    device = python.parent / "splitinfer-device"
    return subprocess.run(
        [str(device), *args], capture_output=True, text=True, timeout=300, env=_ENV, cwd=python.parent
    )


def test_agent_without_torch_runs_head_and_tail_against_real_nodes(tmp_path: Path) -> None:
    python = ensure()
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, env=_ENV)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = subprocess.run(
        [str(python), "-c", "import splitinfer, edge_agent.runner; print(splitinfer.__file__)"],
        capture_output=True, text=True, env=_ENV, cwd=python.parent, check=True,
    ).stdout  # fmt: skip
    assert "site-packages" in where and not where.startswith(str(ROOT) + "/splitinfer")
    # A command that needs torch says which install it needs instead of a traceback.
    server = subprocess.run([str(python.parent / "splitinfer-server"), "--help"], capture_output=True, text=True,
                            env=_ENV)  # fmt: skip
    assert server.returncode == 2 and "splitinfer[server]" in server.stderr and "Traceback" not in server.stderr

    model, example = build("tiny_cnn")
    graph = ModelGraph.build(export_program(model, example), example)
    n = len(graph.nodes)
    pool = ModelPool(tmp_path / "pool")
    sha = pool.add_division(
        partition_at(graph, "tiny_cnn", [n // 4, n // 2, 3 * n // 4]), variant="fp32", division_name="default"
    )
    names = [p.name for p in pool.division(sha).partitions]
    assert names == ["p0", "p1", "p2", "p3"]
    x = torch.randn(1, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()

    nodes = [spawn_node(["--torch-threads", "1"]) for _ in range(2)]
    try:
        for node, part in zip(nodes, ("p1", "p2"), strict=True):
            target = tmp_path / "exports" / part
            part_sha = pool.export_partition(sha, part, target)
            with NodeClient(node.address) as client:
                assert client.load_partition(
                    str(target), PartitionKey("tiny_cnn", "fp32", part), part_sha
                ).hosted.runtime
        remote = f"p1={nodes[0].address},p2={nodes[1].address}"
        for codec, tol in (("none", 1e-4), ("int8+zstd", 0.1)):
            out = tmp_path / f"out-{codec}.npz"
            done = _agent(
                python, "--pool", str(tmp_path / "pool"), "--division", sha, "--head", "p0", "--remote", remote,
                "--tail", "p3", "--codec", codec, "--input", str(tmp_path / "x.npy"), "--output", str(out),
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
            assert "p0=" in done.stderr and "p3=" in done.stderr  # head and tail ran on the device
            (got,) = np.load(out).values()
            np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
        # Device only: every partition on the agent, still without torch.
        done = _agent(python, "--pool", str(tmp_path / "pool"), "--division", sha,
                      "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "alone.npz"))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        np.testing.assert_allclose(next(iter(np.load(tmp_path / "alone.npz").values())), expected, rtol=1e-4, atol=1e-4)
        # A bad input is refused on the device, naming the tensor.
        np.save(tmp_path / "bad.npy", np.zeros((1, 3, 16, 16), np.float32))
        done = _agent(
            python, "--pool", str(tmp_path / "pool"), "--division", sha, "--head", "p0", "--remote", remote,
            "--tail", "p3", "--input", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "bad.npz"),
        )  # fmt: skip
        assert done.returncode != 0 and "must be" in done.stderr
    finally:
        for node in nodes:
            node.stop()
