"""Where ``make cluster-up`` deploys each partition: as the Divider placed it, so that requests cross nodes."""

from __future__ import annotations

import pytest

from splitinfer.cluster import format_bytes
from splitinfer.controller.placement import placement

NODES = [("node0", "10.0.0.1:1"), ("node1", "10.0.0.2:1"), ("node2", "10.0.0.3:1")]


def test_partitions_sized_for_named_nodes_go_to_those_nodes() -> None:
    placed = placement([("p0", "node2"), ("p1", "node0")], NODES)
    assert placed == {"p0": ["10.0.0.3:1"], "p1": ["10.0.0.1:1"]}


def test_server_names_the_cluster_lacks_are_spread_over_distinct_nodes_in_order() -> None:
    placed = placement([("p0", "a"), ("p1", "b"), ("p2", "c")], NODES[:2])
    assert placed["p0"] != placed["p1"], "consecutive partitions must cross nodes"
    assert placed["p2"] == placed["p0"]  # ring order once every node has one
    # The same unknown name always maps to the same node.
    again = placement([("p0", "a"), ("p1", "a"), ("p2", "b")], NODES)
    assert again["p0"] == again["p1"] != again["p2"]


def test_named_nodes_are_not_reused_for_unnamed_partitions() -> None:
    placed = placement([("p0", "node0"), ("p1", ""), ("p2", "")], NODES)
    assert placed["p0"] == ["10.0.0.1:1"]
    assert {placed["p1"][0], placed["p2"][0]} == {"10.0.0.2:1", "10.0.0.3:1"}


def test_device_partitions_go_everywhere_and_replicas_follow_ring_order() -> None:
    placed = placement([("head", "device"), ("p1", "node1"), ("p2", "node2")], NODES, replicas=2)
    assert placed["head"] == [a for _, a in NODES]
    assert placed["p1"] == ["10.0.0.2:1", "10.0.0.3:1"]
    assert placed["p2"] == ["10.0.0.3:1", "10.0.0.1:1"]
    assert placement([("p1", "node1")], NODES, replicas=10)["p1"] == [*sorted(a for _, a in NODES)[1:], NODES[0][1]]


def test_placement_edge_cases() -> None:
    assert placement([("p0", "a")], []) == {}
    with pytest.raises(ValueError, match="replicas"):
        placement([("p0", "a")], NODES, replicas=0)


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (4 * 2**20, "4.0 MiB"),
     (150 * 2**20, "150 MiB"), (3 * 2**30, "3.0 GiB"), (2**50, "1024 TiB")],
)  # fmt: skip
def test_bytes_keep_small_counts_visible(count: int, text: str) -> None:
    assert format_bytes(count) == text
