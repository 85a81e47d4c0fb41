"""The node process's malloc policy: large buffers stay in the heap instead of going back to the kernel.

A hop allocates and frees buffers of a tensor's size several times per request (the bytes gRPC received,
the decoded input, the partition's output, the response gRPC sends). glibc serves allocations above its mmap
threshold (128 KiB, raised dynamically up to 32 MiB only after such a chunk is freed) with fresh ``mmap``
s and trims the heap above its trim threshold, so every request faults those pages in again and zeroes
them: at 1-4 MiB that is most of what a ``grpc.aio`` hop costs beyond a synchronous server here (a
``grpc.aio`` echo of 4 MiB 13.6 ms with the defaults, 8.6 ms with the thresholds raised).

:func:`apply_malloc_policy` sets both thresholds with ``mallopt`` (glibc only; elsewhere it does nothing
and says so), and the number of arenas: threads other than the main one allocate from arenas of their own,
whose heaps glibc unmaps as soon as they are empty whatever the trim threshold says, so the buffers a hop
allocates on the event loop or a compute thread were faulted in afresh on every request (a 16 MiB hop: about
4,500-6,000 minor faults; with one arena, the main heap where the thresholds hold, a few hundred). The
splitinfer-server daemon applies it at start from ``NodeConfig.malloc_mmap_threshold_bytes``,
``NodeConfig.malloc_trim_threshold_bytes`` and ``NodeConfig.malloc_arena_max`` (0 keeps glibc's default). One
arena means one allocator lock for every thread; Python's own allocator and glibc's per-thread cache serve
small objects without it, and a node runs few threads that allocate large buffers. The price: freed memory up to the
trim threshold stays in the process (its RSS does not shrink after a burst of large requests), bounded by
that threshold plus the node's in-flight memory budget.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["apply_malloc_policy"]

log = logging.getLogger("splitinfer.server")

#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018  (present in glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def apply_malloc_policy(mmap_threshold_bytes: int, trim_threshold_bytes: int, arena_max: int = 0) -> dict[str, bool]:
    """Sets glibc's mmap and trim thresholds and its arena count for this process (0: leave that one alone);
    returns which settings took effect. Process-wide: call it once, at the start of a daemon, before it starts
    threads, not from a library."""
    applied = {"mmap_threshold": False, "trim_threshold": False, "arena_max": False}
    if not (mmap_threshold_bytes or trim_threshold_bytes or arena_max):
        return applied
    libc = _libc()
    if libc is None:
        log.info("malloc policy not applied: this C library has no mallopt (glibc only)")
        return applied
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    for key, param, value in (
        ("mmap_threshold", _M_MMAP_THRESHOLD, mmap_threshold_bytes),
        ("trim_threshold", _M_TRIM_THRESHOLD, trim_threshold_bytes),
        ("arena_max", _M_ARENA_MAX, arena_max),
    ):
        if value:
            applied[key] = bool(mallopt(param, min(value, 2**31 - 1)))
            if not applied[key]:
                log.warning("mallopt refused %s = %d; glibc's default stays", key, value)
    return applied
