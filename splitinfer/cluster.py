"""``make cluster-up | cluster-status | cluster-down``: a whole cluster on one machine, for operators.

``up`` starts a real etcd, the front door (front-end, Model Pool and Result Store services) and N server
nodes as background processes, with logs and a state file under one run directory, waits until every
health check passes, deploys each model's partitions onto the nodes the Divider placed them on (see
``placement``), and prints the endpoints. ``status`` shows each component's health and the registry's view
(nodes by name, partitions, load, a live metrics summary). ``down`` stops what ``up`` started. Starting
twice, or stopping when nothing runs, says so.

    python -m splitinfer.cluster up --config deploy/cluster.json --run-dir run/cluster
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from splitinfer.config import load_config
from splitinfer.controller.controller import read_status
from splitinfer.controller.placement import placement
from splitinfer.pool import ModelPool
from splitinfer.registry import EtcdRegistry
from splitinfer.registry.etcd_server import start_etcd
from splitinfer.runtime import PartitionKey
from splitinfer.transport.clients import NodeClient

__all__ = ["ClusterConfig", "format_bytes", "main"]


@dataclass(frozen=True)
class ClusterConfig:
    #: Server nodes to start: each a JSON object of NodeConfig fields (torch_threads, compute_slots, ...) and
    #: optionally a "name" (default node0, node1, ...): a division whose partitions were sized for servers of
    #: these names (``splitinfer divide --capacities``) is deployed onto them.
    nodes: list[dict[str, Any]] = field(default_factory=lambda: [{"torch_threads": 1}, {"torch_threads": 1}])
    #: Nodes that host each server partition (1: only the node it was placed on; more: the next nodes in
    #: ring order too, as replicas the planner balances over).
    replicas: int = 1
    #: The division controller (``splitinfer-divider``), started with the front-end when this names models to
    #: manage: a JSON object of ControllerConfig fields, e.g. {"models": ["resnet18@fp32"]}. Empty: none.
    controller: dict[str, Any] = field(default_factory=dict)
    #: Pool directory; relative paths are inside the run directory.
    pool_dir: str = "pool"
    #: Results database; relative to the run directory.
    results_db: str = "results.db"
    #: Seconds to wait for every component's health check.
    start_timeout_s: float = 60.0
    #: Several machines: host name -> {"address", "etcd": bool, "etcd_port", "frontend": bool,
    #: "frontend_port", "nodes": [...]}; each machine runs ``up --host NAME`` with the same file. Empty: the
    #: whole cluster on this machine, on loopback.
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: etcd endpoints (etcd://host:port[,...]) when etcd runs outside the cluster; otherwise the host with
    #: ``"etcd": true`` runs it.
    etcd_endpoints: str = ""


@dataclass(frozen=True)
class HostPlan:
    """What ``up`` starts on this machine."""

    address: str = "127.0.0.1"
    etcd: bool = True
    etcd_port: int = 0
    frontend: bool = True
    frontend_port: int = 0
    nodes: list[dict[str, Any]] = field(default_factory=list)


def host_plan(config: ClusterConfig, host: str) -> tuple[HostPlan, str]:
    """This machine's share of the cluster and the registry endpoint everyone uses."""
    if not config.hosts:
        if host:
            raise ValueError("--host needs a config with a 'hosts' section")
        return HostPlan(nodes=config.nodes), ""
    if host not in config.hosts:
        raise ValueError(f"host {host!r} is not in the config; hosts: {sorted(config.hosts)}")
    known = {f.name for f in HostPlan.__dataclass_fields__.values()}
    for name, spec in config.hosts.items():
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"host {name!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    plans = {name: HostPlan(**{"etcd": False, "frontend": False, "etcd_port": 2379, **spec})
             for name, spec in config.hosts.items()}  # fmt: skip
    registry = config.etcd_endpoints
    if not registry:
        with_etcd = [p for p in plans.values() if p.etcd]
        if len(with_etcd) != 1:
            raise ValueError('exactly one host needs "etcd": true, or give etcd_endpoints')
        registry = f"etcd://{with_etcd[0].address}:{with_etcd[0].etcd_port}"
    return plans[host], registry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _healthy(address: str, timeout_s: float = 2.0) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def _spawn(command: list[str], log: Path, port_file: Path, timeout_s: float) -> tuple[int, int]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{command[2]} exited with {process.returncode}; see {log}")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"{command[2]} did not start within {timeout_s}s; see {log}")
        time.sleep(0.05)
    return process.pid, int(port_file.read_text())


def _state_path(run_dir: Path) -> Path:
    return run_dir / "state.json"


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    path = _state_path(run_dir)
    return json.loads(path.read_text()) if path.exists() else None


def _pids(state: dict[str, Any]) -> list[int]:
    """Every process ``up`` started, in the order ``down`` stops them: the controller first (it would react
    to nodes leaving), then nodes (they leave the registry), the front-end, etcd."""
    parts = [state.get("controller", {}), *state["nodes"], state["frontend"], state["etcd"]]
    return [c["pid"] for c in parts if c.get("pid")]


def up(config: ClusterConfig, run_dir: Path, host: str = "") -> int:
    existing = _read_state(run_dir)
    if existing is not None and any(_alive(pid) for pid in _pids(existing)):
        print(f"a cluster is already running from {run_dir} (pids {_pids(existing)}); run `make cluster-down` first")
        return 1
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    for stale in run_dir.glob("*.port"):
        stale.unlink()
    pool_dir = run_dir / config.pool_dir
    ModelPool(pool_dir)  # creates it
    plan, registry = host_plan(config, host)
    state: dict[str, Any] = {"etcd": {}, "frontend": {}, "nodes": [], "host": host, "replicas": config.replicas}
    if plan.etcd:
        etcd = start_etcd(run_dir / "etcd", host=plan.address, client_port=plan.etcd_port)
        state["etcd"] = {"pid": etcd.process.pid, "endpoint": etcd.endpoint}
        registry = registry or f"etcd://{etcd.endpoint}"
    state["registry"] = registry
    _state_path(run_dir).write_text(json.dumps(state, indent=1))  # so that `down` can clean up a failed start
    python = sys.executable
    if plan.frontend:
        pid, port = _spawn(
            [python, "-m", "splitinfer.frontend", "--host", plan.address, "--port", str(plan.frontend_port),
             "--pool-dir", str(pool_dir), "--results-db", str(run_dir / config.results_db), "--registry", registry,
             "--port-file", str(run_dir / "frontend.port")],
            logs / "frontend.log", run_dir / "frontend.port", config.start_timeout_s,
        )  # fmt: skip
        state["frontend"] = {"pid": pid, "address": f"{plan.address}:{port}"}
        _state_path(run_dir).write_text(json.dumps(state, indent=1))
    for index, spec in enumerate(plan.nodes):
        node = dict(spec)
        name = str(node.pop("name", f"node{index}"))
        node_config = run_dir / f"node{index}.json"
        node_config.write_text(
            json.dumps({"metrics_port": 0, **node, "cache_dir": str(run_dir / f"node{index}-cache")})
        )
        pid, port = _spawn(
            [python, "-m", "server_node", "--config", str(node_config), "--registry", registry, "--host",
             plan.address, "--port", "0", "--port-file", str(run_dir / f"node{index}.port")],
            logs / f"node{index}.log", run_dir / f"node{index}.port", config.start_timeout_s,
        )  # fmt: skip
        state["nodes"].append({"pid": pid, "address": f"{plan.address}:{port}", "name": name})
        _state_path(run_dir).write_text(json.dumps(state, indent=1))
    deadline = time.monotonic() + config.start_timeout_s
    addresses = [a for a in [state["frontend"].get("address"), *(n["address"] for n in state["nodes"])] if a]
    while not all(_healthy(a) for a in addresses):
        if time.monotonic() > deadline:
            print(f"components did not become healthy within {config.start_timeout_s}s; logs in {logs}")
            return 1
        time.sleep(0.2)
    deployed = deploy(run_dir) if plan.frontend else []
    if plan.frontend and config.controller:
        controller_config = run_dir / "controller.json"
        controller_config.write_text(json.dumps(config.controller))
        pid, _ = _spawn(
            [python, "-m", "splitinfer.controller", "--config", str(controller_config), "--pool-dir", str(pool_dir),
             "--pool-address", state["frontend"]["address"], "--registry", registry,
             "--frontends", state["frontend"]["address"], "--ready-file", str(run_dir / "controller.port")],
            logs / "controller.log", run_dir / "controller.port", config.start_timeout_s,
        )  # fmt: skip
        state["controller"] = {"pid": pid}
        _state_path(run_dir).write_text(json.dumps(state, indent=1))
    print(f"cluster up ({run_dir}{f', host {host}' if host else ''}):")
    print(f"  registry    {registry}{'  (etcd started here)' if plan.etcd else ''}")
    if plan.frontend:
        print(f"  front-end   {state['frontend']['address']}  (FrontEndService, Open Inference Protocol, "
              "ModelPoolService, ResultStoreService)")  # fmt: skip
    for node in state["nodes"]:
        print(f"  {node['name']:<11} {node['address']}")
    if state.get("controller"):
        managed = ", ".join(config.controller.get("models", []))
        print(f"  controller  pid {state['controller']['pid']}  (splitinfer-divider, managing {managed})")
    if plan.frontend:
        print(f"  deployed    {len(deployed)} partition copies from {pool_dir}:")
        for line in _placement_lines(deployed, {n["address"]: n["name"] for n in state["nodes"]}):
            print(f"    {line}")
    return 0


def deploy(run_dir: Path) -> list[tuple[str, str, str]]:
    """Loads every partition of every model's default division in the pool onto the nodes ``placement``
    chooses, among this machine's nodes and every other node in the registry (nodes of other hosts, started
    before this front-end). Returns (partition key, node address, how) for each copy loaded."""
    state = _read_state(run_dir)
    if state is None:
        raise RuntimeError(f"no cluster state in {run_dir}")
    if not state["frontend"]:
        raise RuntimeError("deploy runs on the host with the front-end (it serves the pool)")
    pool = ModelPool(run_dir / ClusterConfig().pool_dir)
    frontend = state["frontend"]["address"]
    nodes = [(n["name"], n["address"]) for n in state["nodes"]]
    registry = EtcdRegistry(state["registry"].removeprefix("etcd://"), timeout_s=5.0)
    known = {address for _, address in nodes}
    nodes += [(address, address) for address in sorted(registry.servers()) if address not in known]
    registry.close()
    loaded: list[tuple[str, str, str]] = []
    for entry in pool.variants():
        sha = entry.divisions.get("default")
        if sha is None:
            continue
        parts = [(part["name"], part.get("host", "")) for part in pool.manifest(sha)["partitions"]]
        for name, addresses in placement(parts, nodes, int(state.get("replicas", 1))).items():
            key = PartitionKey(entry.model, entry.variant, name)
            for address in addresses:
                with NodeClient(address) as client:
                    client.load_partition(f"pool://{frontend}/{sha}/{name}", key)
                loaded.append((str(key), address, dict(parts)[name] or "-"))
    return loaded


def _placement_lines(loaded: list[tuple[str, str, str]], names: dict[str, str]) -> list[str]:
    by_partition: dict[str, list[str]] = {}
    sized: dict[str, str] = {}
    for key, address, host in loaded:
        by_partition.setdefault(key, []).append(names.get(address, address))
        sized[key] = host
    return [
        f"{key:<32} on {', '.join(where):<24} (sized for {sized[key]})" for key, where in sorted(by_partition.items())
    ]


def format_bytes(count: float) -> str:
    """``count`` bytes with a unit that keeps small counts visible: 512 B, 12.3 KiB, 4.00 MiB, 1.50 GiB."""
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if count < 100 else f"{count:.0f} {unit}"
    raise AssertionError("unreachable")


def status(run_dir: Path) -> int:
    state = _read_state(run_dir)
    if state is None:
        print(f"no cluster is running from {run_dir}")
        return 1
    rows: list[tuple[str, int, str, bool]] = []
    if state["etcd"]:
        rows.append(("etcd", state["etcd"]["pid"], state["etcd"]["endpoint"], False))
    if state["frontend"]:
        rows.append(("front-end", state["frontend"].get("pid", 0), state["frontend"].get("address", "-"), True))
    rows += [(n["name"], n["pid"], n["address"], True) for n in state["nodes"]]
    if state.get("controller"):
        rows.append(("controller", state["controller"]["pid"], "-", False))
    print(f"{'component':<11} {'pid':>7} {'address':<22} state")
    for name, pid, address, grpc_health in rows:
        alive = pid and _alive(pid)
        health = "-" if not alive else ("SERVING" if (not grpc_health or _healthy(address)) else "NOT SERVING")
        print(f"{name:<11} {pid:>7} {address:<22} {'running' if alive else 'stopped'} {health}")
    try:
        registry = EtcdRegistry(state["registry"].removeprefix("etcd://"), timeout_s=2.0)
        servers = registry.servers()
        registry.close()
    except Exception as exc:
        print(f"registry: unreachable ({exc})")
        return 1
    names = {n["address"]: n["name"] for n in state["nodes"]}
    print(f"registry: {len(servers)} servers")
    for address, record in sorted(servers.items()):
        print(
            f"  {names.get(address, '-'):<8} {address:<22} in flight {record.in_flight:>3}  "
            f"{record.compute_flops / 1e9:6.1f} GFLOP/s  "
            f"{len(record.partitions)} partitions: {', '.join(record.partitions[:6])}"
            + (" ..." if len(record.partitions) > 6 else "")
        )
    published = read_status(run_dir / ClusterConfig().pool_dir)
    if published is not None:
        print(f"divisions (the division controller, {time.time() - published.updated_unix_s:.0f} s ago):")
        for line in published.lines():
            print(f"  {line}")
    print("metrics (live, from each node's /metrics):")
    for address, record in sorted(servers.items()):
        summary = metrics_summary(address.rpartition(":")[0], record.metrics_port)
        print(f"  {names.get(address, '-'):<8} {address:<22} {summary}")
    return 0


def metrics_summary(host: str, port: int, timeout_s: float = 2.0) -> str:
    """One line from a node's Prometheus metrics: requests, errors by code, compute time, bytes by codec."""
    if not port:
        return "no metrics endpoint"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError as exc:
        return f"metrics unreachable ({exc})"
    requests = errors = compute_count = compute_sum = 0.0
    error_codes: dict[str, float] = {}
    bytes_by: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "splitinfer_requests_total":
                requests += sample.value
            elif sample.name == "splitinfer_request_errors_total":
                errors += sample.value
                error_codes[sample.labels["code"]] = sample.value
            elif sample.name == "splitinfer_partition_compute_seconds_count":
                compute_count += sample.value
            elif sample.name == "splitinfer_partition_compute_seconds_sum":
                compute_sum += sample.value
            elif sample.name == "splitinfer_tensor_bytes_total":
                key = f"{sample.labels['direction']}:{sample.labels['codec']}"
                bytes_by[key] = bytes_by.get(key, 0.0) + sample.value
    mean_ms = compute_sum / compute_count * 1e3 if compute_count else 0.0
    codes = ", ".join(f"{c} {v:.0f}" for c, v in sorted(error_codes.items()))
    moved = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(bytes_by.items()))
    return (
        f"requests {requests:.0f}, errors {errors:.0f}{f' ({codes})' if codes else ''}, "
        f"partition runs {compute_count:.0f} (mean {mean_ms:.1f} ms), bytes {moved or '-'}"
    )


def down(run_dir: Path, timeout_s: float = 15.0) -> int:
    state = _read_state(run_dir)
    if state is None:
        print(f"no cluster is running from {run_dir}; nothing to stop")
        return 0
    # Nodes first (they leave the registry), then the front-end, then etcd.
    for pid in _pids(state):
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
    _state_path(run_dir).unlink()
    print(f"cluster in {run_dir} stopped")
    return 0


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="splitinfer-cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "status", "down", "deploy"])
    parser.add_argument("--config", type=Path, help="cluster config (JSON); default: two nodes")
    parser.add_argument("--run-dir", type=Path, default=Path("run/cluster"))
    parser.add_argument("--host", default="", help="with a multi-host config: start this machine's share")
    args = parser.parse_args(argv)
    config = load_config(ClusterConfig, args.config) if args.config else ClusterConfig()
    if args.action == "up":
        try:
            return up(config, args.run_dir, args.host)
        except ValueError as exc:
            print(f"cannot bring the cluster up: {exc}")
            return 2
    if args.action == "status":
        return status(args.run_dir)
    if args.action == "deploy":
        loaded = deploy(args.run_dir)
        state = _read_state(args.run_dir) or {"nodes": []}
        print(f"deployed {len(loaded)} partition copies")
        for line in _placement_lines(loaded, {n["address"]: n["name"] for n in state["nodes"]}):
            print(f"  {line}")
        return 0
    return down(args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
