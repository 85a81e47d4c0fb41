"""Component configs load from JSON and refuse keys they do not know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from server_node.config import NodeConfig


def test_config_files_set_fields_and_refuse_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(json.dumps({"port": 7000, "slowdown_factor": 2.0}))
    node = NodeConfig.from_file(tmp_path / "node.json")
    assert node.port == 7000 and node.slowdown_factor == 2.0 and node.max_in_flight == NodeConfig().max_in_flight
    (tmp_path / "agent.json").write_text(json.dumps({"device_id": "d1", "uplinkk_mbps": 3}))
    with pytest.raises(ValueError, match="uplinkk_mbps"):
        AgentConfig.from_file(tmp_path / "agent.json")
