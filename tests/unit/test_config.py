"""Component configs load from JSON and refuse keys they do not know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from server_node.config import NodeConfig


def test_config_files_set_fields_and_refuse_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(json.dumps({"port": 7000, "idle_timeout_s": 2.0}))
    node = NodeConfig.from_file(tmp_path / "node.json")
    assert node.port == 7000 and node.idle_timeout_s == 2.0 and node.max_in_flight == NodeConfig().max_in_flight
    (tmp_path / "emulated.json").write_text(json.dumps({"slowdown_factor": 2.0}))  # emulation is not config
    with pytest.raises(ValueError, match="slowdown_factor"):
        NodeConfig.from_file(tmp_path / "emulated.json")
    (tmp_path / "contradiction.json").write_text(json.dumps({"max_in_flight": 100, "max_streams": 50}))
    with pytest.raises(ValueError, match="admission control could never trigger"):
        NodeConfig.from_file(tmp_path / "contradiction.json")
    (tmp_path / "agent.json").write_text(json.dumps({"device_id": "d1", "uplinkk_mbps": 3}))
    with pytest.raises(ValueError, match="uplinkk_mbps"):
        AgentConfig.from_file(tmp_path / "agent.json")


def test_cluster_host_plans_from_one_config() -> None:
    from splitinfer.cluster import ClusterConfig, host_plan

    hosts = {
        "cloud": {"address": "10.0.0.3", "etcd": True, "nodes": [{"torch_threads": 4}]},
        "edge": {"address": "10.0.0.2", "frontend": True, "frontend_port": 50051, "nodes": []},
    }
    plan, registry = host_plan(ClusterConfig(hosts=hosts), "edge")
    assert registry == "etcd://10.0.0.3:2379"
    assert plan.frontend and not plan.etcd and plan.address == "10.0.0.2" and plan.frontend_port == 50051
    plan, _ = host_plan(ClusterConfig(hosts=hosts), "cloud")
    assert plan.etcd and not plan.frontend and plan.nodes == [{"torch_threads": 4}]
    single, registry = host_plan(ClusterConfig(), "")
    assert single.etcd and single.frontend and registry == ""


def test_cluster_host_plans_refuse_bad_configs() -> None:
    import pytest

    from splitinfer.cluster import ClusterConfig, host_plan

    with pytest.raises(ValueError, match="not in the config"):
        host_plan(ClusterConfig(hosts={"a": {"address": "1.2.3.4", "etcd": True}}), "b")
    with pytest.raises(ValueError, match="unknown keys"):
        host_plan(ClusterConfig(hosts={"a": {"address": "1.2.3.4", "etcd": True, "gpu": 1}}), "a")
    with pytest.raises(ValueError, match="exactly one host"):
        host_plan(ClusterConfig(hosts={"a": {"address": "1.2.3.4"}}), "a")
    with pytest.raises(ValueError, match="--host needs"):
        host_plan(ClusterConfig(), "a")
