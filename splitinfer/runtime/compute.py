"""How fast this machine computes: a short matmul microbenchmark, in FLOP/s."""

from __future__ import annotations

import time

import torch

__all__ = ["measure_flops"]


def measure_flops(seconds: float = 0.2, size: int = 256) -> float:
    """Floating-point operations per second of float32 matmuls of ``size``, measured for about ``seconds``."""
    if seconds <= 0:
        return 0.0
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm up
    flops_per_mm = 2.0 * size**3
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b)
        count += 1
    return count * flops_per_mm / elapsed
