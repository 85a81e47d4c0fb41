"""Three hosts in network namespaces: device, edge and cloud, with tc htb on the device<->edge link.

etcd runs on the cloud host; one server node on the edge host and one on the cloud host, each bound to
all interfaces and advertising its own host's address. The device finds them through etcd and sends a
512 KiB input through edge -> cloud; the time follows the shaped link's bandwidth as it is stepped."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from splitinfer.divider import partition_at
from splitinfer.graph import ModelGraph
from splitinfer.pool import ModelPool
from splitinfer.program import export_program
from splitinfer.routing import build_route
from splitinfer.testbed import Testbed, available

ROOT = Path(__file__).resolve().parents[2]
DEVICE_SCRIPT = Path(__file__).with_name("_netns_device.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    ok, why = available()
    if not ok:
        pytest.skip(f"network namespaces are not available here: {why}")
    root = tmp_path_factory.mktemp("netns")
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(16), nn.Flatten(), nn.Linear(512, 10))
    example = (torch.randn(1, 8, 128, 128),)
    program = export_program(model.eval(), example)
    graph = ModelGraph.build(program, example)
    cut = next(i for i, n in enumerate(graph.nodes) if "pool" in n.op) + 1
    division = partition_at(graph, "shaped", [cut])
    pool = ModelPool(root / "pool")
    sha = pool.add_division(division, variant="fp32", division_name="default")
    exports = {p.name: root / "exports" / p.name for p in division.partitions}
    for name, target in exports.items():
        pool.export_partition(sha, name, target)
    with Testbed.create(uplink_mbps=16.0) as bed:
        etcd_url = f"http://{bed.address['cloud']}:2379"
        bed.spawn("cloud", ["etcd", "--name", "cloud", "--data-dir", str(root / "etcd"),
                            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                            "--listen-peer-urls", f"http://{bed.address['cloud']}:2380",
                            "--initial-advertise-peer-urls", f"http://{bed.address['cloud']}:2380",
                            "--initial-cluster", f"cloud=http://{bed.address['cloud']}:2380", "--log-level", "warn"],
                  root / "etcd.log")  # fmt: skip
        registry = f"etcd://{bed.address['cloud']}:2379"
        for host, part in (("edge", "p0"), ("cloud", "p1")):
            port_file = root / f"{host}.port"
            bed.spawn(host, [sys.executable, "-m", "server_node", "--host", "0.0.0.0", "--port", "50051",
                             "--advertise-address", f"{bed.address[host]}:50051", "--registry", registry,
                             "--torch-threads", "1", "--load", str(exports[part]), "--port-file", str(port_file)],
                      root / f"{host}.log")  # fmt: skip
        deadline = time.monotonic() + 60
        while not all((root / f"{h}.port").exists() for h in ("edge", "cloud")):
            assert time.monotonic() < deadline, (root / "edge.log").read_text()[-2000:]
            time.sleep(0.1)
        route = build_route("shaped", "fp32", division.partitions, {p.name: ["unset:0"] for p in division.partitions})
        (root / "route.pb").write_bytes(route.SerializeToString())
        yield {"bed": bed, "root": root, "registry": registry, "input": program.input_names[0]}


def _requests(cluster: dict, count: int) -> dict:  # type: ignore[type-arg]
    bed: Testbed = cluster["bed"]
    done = subprocess.run(
        bed.command("device", [sys.executable, str(DEVICE_SCRIPT), cluster["registry"],
                               str(cluster["root"] / "route.pb"), cluster["input"], str(count)]),
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_pipeline_crosses_hosts_and_transfer_time_follows_the_shaped_link(cluster: dict) -> None:  # type: ignore[type-arg]
    bed: Testbed = cluster["bed"]
    timings = {}
    for mbps in (16.0, 4.0):
        bed.set_rate(mbps)
        report = _requests(cluster, 3)
        # Each node is reached at the address it advertised on its own host.
        assert report["servers"] == {
            "shaped@fp32/p0": [f"{bed.address['edge']}:50051"],
            "shaped@fp32/p1": [f"{bed.address['cloud']}:50051"],
        }
        seconds = statistics.median(report["seconds"][1:])  # the first request also opens connections
        ideal = report["input_bytes"] * 8 / (mbps * 1e6)
        timings[mbps] = (seconds, ideal)
        # Never faster than the link allows; not much slower than it plus compute and protocol overhead.
        assert ideal * 0.95 <= seconds <= ideal * 1.5 + 0.25, (mbps, seconds, ideal)
    slow, fast = timings[4.0][0], timings[16.0][0]
    assert 2.5 <= slow / fast <= 4.5, timings  # a quarter of the bandwidth: about four times the transfer time


def test_device_network_cut_falls_back_and_recovers(tmp_path: Path) -> None:
    """The device's link goes down: the agent answers on the device alone; the link returns: it uses the
    servers again, without being restarted."""
    ok, why = available()
    if not ok:
        pytest.skip(f"network namespaces are not available here: {why}")
    from splitinfer.zoo import build

    model, example = build("tiny_cnn")
    program = export_program(model, example)
    graph = ModelGraph.build(program, example)
    pool = ModelPool(tmp_path / "pool")
    sha = pool.add_division(partition_at(graph, "tiny_cnn", [len(graph.nodes) // 2]), variant="fp32",
                            division_name="default")  # fmt: skip
    exports = [tmp_path / "exports" / p for p in ("p0", "p1")]
    for part, target in zip(("p0", "p1"), exports, strict=True):
        pool.export_partition(sha, part, target)
    with Testbed.create(uplink_mbps=50.0) as bed:
        edge = bed.address["edge"]
        url = f"http://{edge}:2379"
        bed.spawn("edge", ["etcd", "--name", "e", "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", url,
                           "--advertise-client-urls", url, "--listen-peer-urls", f"http://{edge}:2380",
                           "--initial-advertise-peer-urls", f"http://{edge}:2380",
                           "--initial-cluster", f"e=http://{edge}:2380"], tmp_path / "etcd.log")  # fmt: skip
        bed.spawn("edge", [sys.executable, "-m", "server_node", "--host", edge, "--port", "50051", "--registry",
                           f"etcd://{edge}:2379", "--torch-threads", "1", "--load", str(exports[0]), "--load",
                           str(exports[1]), "--port-file", str(tmp_path / "node.port")],
                  tmp_path / "node.log")  # fmt: skip
        bed.spawn("edge", [sys.executable, "-m", "splitinfer.frontend", "--host", edge, "--port", "50050",
                           "--pool-dir", str(pool.root), "--results-db", str(tmp_path / "results.db"), "--registry",
                           f"etcd://{edge}:2379", "--port-file", str(tmp_path / "fe.port")],
                  tmp_path / "fe.log")  # fmt: skip
        deadline = time.monotonic() + 60
        while not ((tmp_path / "node.port").exists() and (tmp_path / "fe.port").exists()):
            assert time.monotonic() < deadline, (tmp_path / "fe.log").read_text()[-2000:]
            time.sleep(0.1)
        stop = tmp_path / "stop"
        agent = subprocess.Popen(
            bed.command("device", [sys.executable, str(Path(__file__).with_name("_netns_agent.py")), f"{edge}:50050",
                                   str(tmp_path / "agent"), program.input_names[0], str(stop)]),
            stdout=subprocess.PIPE, stderr=(tmp_path / "agent.log").open("wb"), text=True, cwd=ROOT,
        )  # fmt: skip
        phases: dict[str, list[dict]] = {"before": [], "cut": [], "after": []}  # type: ignore[type-arg]
        try:
            assert agent.stdout is not None
            phase, deadline = "before", time.monotonic() + 120
            for line in agent.stdout:
                result = json.loads(line)
                assert result["ok"], result  # every answer is right, wherever it ran
                phases[phase].append(result)
                if phase == "before" and sum(not r["fallback"] for r in phases["before"]) >= 2:
                    bed.set_link(False)
                    phase = "cut"
                elif phase == "cut" and sum(r["fallback"] for r in phases["cut"]) >= 2:
                    bed.set_link(True)
                    phase = "after"
                elif phase == "after" and not result["fallback"]:
                    break
                assert time.monotonic() < deadline, phases
        finally:
            stop.touch()
            agent.wait(timeout=30)
        assert any(r["fallback"] for r in phases["cut"]), phases
        assert phases["after"] and not phases["after"][-1]["fallback"], phases


def test_one_cluster_config_brings_up_components_on_several_hosts(tmp_path: Path) -> None:
    """The same config file on two hosts: the cloud host runs etcd and a node, the edge host the front-end and
    a node, each with ``cluster up --host NAME``; the edge host deploys onto both; a device uses it."""
    ok, why = available()
    if not ok:
        pytest.skip(f"network namespaces are not available here: {why}")
    from splitinfer.zoo import build

    with Testbed.create(uplink_mbps=50.0) as bed:
        edge, cloud = bed.address["edge"], bed.address["cloud"]
        config = tmp_path / "cluster.json"
        config.write_text(json.dumps({"hosts": {
            "cloud": {"address": cloud, "etcd": True, "nodes": [{"torch_threads": 1}]},
            "edge": {"address": edge, "frontend": True, "frontend_port": 50050, "nodes": [{"torch_threads": 1}]},
        }}))  # fmt: skip
        model, example = build("tiny_cnn")
        program = export_program(model, example)
        graph = ModelGraph.build(program, example)
        pool = ModelPool(tmp_path / "edge" / "pool")
        pool.add_division(partition_at(graph, "tiny_cnn", [len(graph.nodes) // 2]), variant="fp32",
                          division_name="default")  # fmt: skip

        def cluster(host: str, *args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "splitinfer.cluster", *args, "--run-dir", str(tmp_path / host)]
            return subprocess.run(bed.command(host, command), capture_output=True, text=True, timeout=180, cwd=ROOT)

        run_dirs = []
        try:
            for host in ("cloud", "edge"):  # etcd first; the front-end's host deploys onto every node
                done = cluster(host, "up", "--config", str(config), "--host", host)
                run_dirs.append(host)
                assert done.returncode == 0, done.stdout + done.stderr
            # 2 partitions, each on the node the division placed it on (one per node): a request crosses hosts.
            assert "deployed    2 partition copies" in done.stdout, done.stdout
            status = cluster("edge", "status")
            assert "registry: 2 servers" in status.stdout, status.stdout
            assert f"{cloud}:" in status.stdout and f"{edge}:" in status.stdout
            thin = subprocess.run(
                bed.command("device", [sys.executable, str(Path(__file__).with_name("_netns_thin.py")),
                                       f"{edge}:50050", "tiny_cnn"]),
                capture_output=True, text=True, timeout=120, cwd=ROOT,
            )  # fmt: skip
            assert thin.returncode == 0, thin.stderr[-3000:]
            assert json.loads(thin.stdout)["ok"]
        finally:
            states = [json.loads((tmp_path / h / "state.json").read_text()) for h in run_dirs
                      if (tmp_path / h / "state.json").exists()]  # fmt: skip
            for host in reversed(run_dirs):
                cluster(host, "down")
        pids = [c["pid"] for s in states for c in [*s["nodes"], s["frontend"], s["etcd"]] if c.get("pid")]
        assert pids and not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
