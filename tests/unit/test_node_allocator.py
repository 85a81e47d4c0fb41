"""The node's malloc policy (server_node.allocator) and its NodeConfig fields."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from server_node.allocator import apply_malloc_policy
from server_node.config import NodeConfig

GLIBC = ctypes.util.find_library("c") is not None and hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt")


def test_zero_thresholds_change_nothing() -> None:
    assert apply_malloc_policy(0, 0) == {"mmap_threshold": False, "trim_threshold": False}


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_thresholds_take_effect_in_a_fresh_process() -> None:
    # A child process: the policy is process-wide and must not leak into the test run.
    code = (
        "from server_node.allocator import apply_malloc_policy;"
        "print(apply_malloc_policy(64 << 20, 256 << 20), apply_malloc_policy(1 << 20, 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == [
        "{'mmap_threshold':", "True,", "'trim_threshold':", "True}",
        "{'mmap_threshold':", "True,", "'trim_threshold':", "False}",
    ]  # fmt: skip


def test_config_checks_the_thresholds() -> None:
    assert NodeConfig(malloc_mmap_threshold_bytes=0, malloc_trim_threshold_bytes=0)
    with pytest.raises(ValueError, match="malloc_trim_threshold_bytes must be >= 0"):
        NodeConfig(malloc_trim_threshold_bytes=-1)
    with pytest.raises(ValueError, match="malloc_mmap_threshold_bytes must be below 2 GiB"):
        NodeConfig(malloc_mmap_threshold_bytes=2 << 30)
