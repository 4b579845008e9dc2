"""Timing helpers for the benchmarks: best-of-k wall time, FLOP rates, ratios."""

from __future__ import annotations

import time

import torch


def best_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flop_rate(m: int, k: int, n: int, dtype=torch.float32, repeats: int = 5) -> float:
    """FLOP/s of a plain ``torch.matmul`` of (m, k) @ (k, n) in this process."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g, dtype=dtype), torch.randn(k, n, generator=g, dtype=dtype)
    return 2 * m * k * n / best_time(lambda: torch.matmul(a, b), repeats)
