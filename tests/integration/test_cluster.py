"""`make cluster-up`, requests through the front-end, `make cluster-status`, `make cluster-down`: nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from splitinfer.v1 import plan_pb2

ROOT = Path(__file__).resolve().parents[2]


def _make(target: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target, f"CLUSTER_DIR={run_dir}", f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_cluster_up_serve_status_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "cluster"
    capacities = tmp_path / "caps.json"
    capacities.write_text(
        json.dumps(
            {
                "servers": [
                    # Two equal servers: the Divider splits the model over both (p0 on a, p1 on b).
                    {"name": "a", "flops": 1e9, "memory_bytes": 200_000},
                    {"name": "b", "flops": 1e9, "memory_bytes": 200_000},
                ]
            }
        )
    )
    divided = subprocess.run(
        [sys.executable, "-m", "splitinfer.cli", "divide", "splitinfer.zoo:tiny_cnn", "--pool", str(run_dir / "pool"),
         "--task", "tiny", "--accuracy", "fp32=0.9", "--capacities", str(capacities)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert divided.returncode == 0, divided.stdout + divided.stderr
    up = _make("cluster-up", run_dir)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((run_dir / "state.json").read_text())
    pids = [state["etcd"]["pid"], state["frontend"]["pid"], *(n["pid"] for n in state["nodes"])]
    try:
        assert "deployed" in up.stdout and all(_alive(pid) for pid in pids)
        # The division was sized for two servers; each partition is deployed onto its own node.
        assert "tiny_cnn@fp32/p0" in up.stdout and "tiny_cnn@fp32/p1" in up.stdout, up.stdout
        placed = {line.split()[0]: line.split(" on ")[1].split()[0] for line in up.stdout.splitlines()
                  if line.strip().startswith("tiny_cnn@fp32/")}  # fmt: skip
        assert placed["tiny_cnn@fp32/p0"] != placed["tiny_cnn@fp32/p1"], up.stdout
        again = _make("cluster-up", run_dir)
        assert again.returncode != 0 and "already running" in again.stdout
        frontend = state["frontend"]["address"]
        agent = EdgeAgent(
            AgentConfig(device_id="op-test", frontend=frontend, pool=frontend, cache_dir=str(tmp_path / "agent")),
            compute_flops=1e3,  # a device this slow runs nothing: both partitions run on the servers
        )
        from splitinfer.zoo import build

        model, (x,) = build("tiny_cnn")
        result = agent.infer("tiny_cnn", {"input": x}, plan_pb2.Requirements(min_accuracy=0.9))
        agent.close()
        assert not result.device_only_fallback and result.plan is not None and result.plan_id
        assert torch.allclose(result.outputs["linear"], model(x).detach(), atol=1e-4)
        status = _make("cluster-status", run_dir)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("SERVING") >= 4 and "registry: 2 servers" in status.stdout
        assert "tiny_cnn@fp32/p0" in status.stdout
        # The live metrics summary: the requests just served show up in the nodes' Prometheus counters.
        summaries = [line for line in status.stdout.splitlines() if "partition runs" in line]
        assert len(summaries) == 2, status.stdout
        # The request crossed both nodes: each one served it.
        assert all(int(line.split("requests ")[1].split(",")[0]) >= 1 for line in summaries), status.stdout
        assert all(line.split()[0] in ("node0", "node1") for line in summaries), status.stdout
    finally:
        down = _make("cluster-down", run_dir)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not any(_alive(pid) for pid in pids)
    assert "nothing to stop" in _make("cluster-down", run_dir).stdout
