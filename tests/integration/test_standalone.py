"""The Model Pool and the Result Store as their own daemons (as the Kubernetes manifests run them)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinfer.results.client import RemoteResults
from splitinfer.v1 import model_pool_pb2, model_pool_pb2_grpc, result_store_pb2


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp_path / f"{args[0]}.port"
    process = subprocess.Popen([sys.executable, "-m", "splitinfer.standalone", *args, "--port-file", str(port_file)])
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert process.poll() is None, f"{args[0]} exited with {process.returncode}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text()}"


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        return bool(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )


def test_pool_and_results_daemons_serve_and_stop_cleanly(tmp_path: Path) -> None:
    pool, pool_address = _start(tmp_path, "pool", "--pool-dir", str(tmp_path / "pool"))
    results, results_address = _start(tmp_path, "results", "--results-db", str(tmp_path / "results.db"))
    try:
        assert _serving(pool_address) and _serving(results_address)
        with grpc.insecure_channel(pool_address) as channel:
            listed = model_pool_pb2_grpc.ModelPoolServiceStub(channel).ListModels(
                model_pool_pb2.ListModelsRequest(), timeout=5
            )
        assert list(listed.models) == []
        store = RemoteResults(results_address)
        first = result_store_pb2.StoredResult(request_id="r1", caller="c1", model="m", latency_ms=3.0)
        assert store.put(first)[0]
        stored, kept = store.put(result_store_pb2.StoredResult(request_id="r1", caller="c1", model="m2"))
        assert not stored and kept.model == "m"  # the first is kept, and the answer says what it is
        assert store.get("r1", "c1").model == "m"
    finally:
        for process in (pool, results):
            process.terminate()
    assert pool.wait(timeout=20) == 0 and results.wait(timeout=20) == 0
    assert (tmp_path / "results.db").exists()
