"""The node's malloc policy (server_node.allocator) and its NodeConfig fields."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from server_node.allocator import apply_malloc_policy
from server_node.config import NodeConfig

GLIBC = ctypes.util.find_library("c") is not None and hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt")


def test_zero_thresholds_change_nothing() -> None:
    assert apply_malloc_policy(0, 0) == {"mmap_threshold": False, "trim_threshold": False, "arena_max": False}


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_thresholds_take_effect_in_a_fresh_process() -> None:
    # A child process: the policy is process-wide and must not leak into the test run.
    code = (
        "from server_node.allocator import apply_malloc_policy;"
        "print(apply_malloc_policy(64 << 20, 256 << 20), apply_malloc_policy(1 << 20, 0, 1))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == [
        "{'mmap_threshold':", "True,", "'trim_threshold':", "True,", "'arena_max':", "False}",
        "{'mmap_threshold':", "True,", "'trim_threshold':", "False,", "'arena_max':", "True}",
    ]  # fmt: skip


#: A child process: a worker thread (as a node's event loop or compute threads are) allocates four 16 MiB
#: buffers at a time, touches every page and frees them, ten times after a warm-up; prints the minor page
#: faults per round.
_FAULTS = """
import resource, sys, threading
from server_node.allocator import apply_malloc_policy
apply_malloc_policy(256 << 20, 1 << 30, int(sys.argv[1]))
def touch(n):
    buffer = bytearray(n)
    buffer[::4096] = b"\\1" * len(buffer[::4096])
    return buffer
def rounds(count):
    for _ in range(count):
        live = [touch(16 << 20) for _ in range(4)]
        del live
def work(out):
    rounds(3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(10)
    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
out = []
thread = threading.Thread(target=work, args=(out,))
thread.start()
thread.join()
print(out[0])
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_one_arena_keeps_a_threads_large_buffers_in_the_heap() -> None:
    """With glibc's arenas a thread's heap of 64 MiB is unmapped when empty, whatever the trim threshold, so
    four 16 MiB buffers are faulted in afresh every round (4,096 pages); with one arena (NodeConfig's default)
    they are reused from the main heap."""

    def faults(arena_max: int) -> float:
        command = [sys.executable, "-c", _FAULTS, str(arena_max)]
        # glibc's own settings from the environment (container images often set them) would decide instead.
        env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
        return float(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout)

    assert faults(0) >= 4096  # every page of the four buffers, every round: what the policy is for
    assert faults(NodeConfig().malloc_arena_max) < 100


def test_config_checks_the_thresholds() -> None:
    assert NodeConfig(malloc_mmap_threshold_bytes=0, malloc_trim_threshold_bytes=0)
    with pytest.raises(ValueError, match="malloc_trim_threshold_bytes must be >= 0"):
        NodeConfig(malloc_trim_threshold_bytes=-1)
    with pytest.raises(ValueError, match="malloc_arena_max must be >= 0"):
        NodeConfig(malloc_arena_max=-1)
    with pytest.raises(ValueError, match="malloc_mmap_threshold_bytes must be below 2 GiB"):
        NodeConfig(malloc_mmap_threshold_bytes=2 << 30)
