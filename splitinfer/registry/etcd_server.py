"""Running a real etcd server (Debian's ``etcd-server``) for tests, demos and single-machine clusters.

etcd cannot report a port it chose itself, so free ports are found by binding port 0, and the start is
retried on fresh ports if another process took one in between; readiness is its health endpoint answering.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EtcdServer", "start_etcd"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    process: subprocess.Popen[bytes]
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    #: Address etcd listens on and advertises.
    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, timeout_s: float = 30.0) -> None:
        """Starts etcd again on the same ports and data (after :meth:`stop`)."""
        self.process = _spawn(self.data_dir, self.client_port, self.peer_port, self.log_path, self.host)
        _wait_healthy(self, timeout_s)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _spawn(
    data_dir: Path, client_port: int, peer_port: int, log_path: Path, host: str = "127.0.0.1"
) -> subprocess.Popen[bytes]:
    etcd = shutil.which("etcd")
    if etcd is None:
        raise FileNotFoundError("etcd is not installed (Debian package etcd-server; `make install` adds it)")
    client = f"http://{host}:{client_port}"
    peer = f"http://{host}:{peer_port}"
    with log_path.open("ab") as log:
        # fmt: off
        return subprocess.Popen(
            [
                etcd,
                "--name",
                "splitinfer",
                "--data-dir",
                str(data_dir / "data"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"splitinfer={peer}",
                "--log-level",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # fmt: on


def _wait_healthy(server: EtcdServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not server.healthy():
        if server.process.poll() is not None:
            raise RuntimeError(f"etcd exited with {server.process.returncode}: {server.log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"etcd not healthy after {timeout_s}s: {server.log_path.read_text()[-2000:]}")
        time.sleep(0.1)


def start_etcd(
    data_dir: Path | None = None,
    timeout_s: float = 30.0,
    attempts: int = 5,
    *,
    host: str = "127.0.0.1",
    client_port: int = 0,
) -> EtcdServer:
    """Starts etcd with its own data directory; returns once it is healthy. By default on free loopback
    ports; ``host`` and ``client_port`` (peer port: the next one) pin it, for clusters that span machines."""
    base = data_dir or Path(tempfile.mkdtemp(prefix="splitinfer-etcd-"))
    base.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(attempts):
        server = EtcdServer(
            process=None,  # type: ignore[arg-type]
            client_port=client_port or _free_port(),
            peer_port=client_port + 1 if client_port else _free_port(),
            data_dir=base,
            log_path=base / "etcd.log",
            host=host,
        )
        server.process = _spawn(base, server.client_port, server.peer_port, server.log_path, host)
        try:
            _wait_healthy(server, timeout_s)
            return server
        except (RuntimeError, TimeoutError) as exc:  # a port was taken in between: try fresh ones
            last = exc
            server.stop()
    raise RuntimeError(f"could not start etcd after {attempts} attempts: {last}")
