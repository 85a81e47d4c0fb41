"""Starting a server node as a separate process and waiting until it serves (for demos, tests, tools)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitinfer.security.tls import ClientSecurity
from splitinfer.transport.channel import open_channel

__all__ = ["NodeProcess", "spawn_node"]


@dataclass
class NodeProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def spawn_node(
    extra_args: list[str] | None = None,
    timeout_s: float = 60.0,
    log_dir: Path | None = None,
    security: ClientSecurity | None = None,
    slowdown: float | None = None,
) -> NodeProcess:
    """Runs ``python -m server_node --port 0`` and returns once its health check answers SERVING
    (checked over TLS with ``security`` when the node serves TLS). ``slowdown`` runs it through the testbed
    instead, emulating a machine that many times slower (``splitinfer.testbed.Slowdown``)."""
    work = Path(tempfile.mkdtemp(prefix="splitinfer-node-", dir=log_dir))
    port_file = work / "port"
    log_path = work / "node.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                *(["splitinfer.testbed", "node", "--slowdown", str(slowdown)] if slowdown else ["server_node"]),
                "--port",
                "0",
                "--port-file",
                str(port_file),
                *(extra_args or []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"server node exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"server node did not start in {timeout_s}s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.05)
    node = NodeProcess(process, int(port_file.read_text()), log_path)
    with open_channel(node.address, security=security) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=max(1.0, deadline - time.monotonic())
        )
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        node.kill()
        raise RuntimeError(f"server node at {node.address} is not serving: {response.status}")
    return node
