"""What ``dedup.mode: auto`` weighs: a measured GEMM rate, turned into a budget of dot products.

Auto runs the walk against the kept set (:mod:`.kept_walk`, exact) and gives it
``dedup.auto_exact_budget_s`` of similarity GEMM on one node's CPUs: rows x kept x ``dim``
multiply-adds, projected as it goes; past the budget (sparse data at scale, where most rows
are kept) it clusters instead. ``exact_seconds`` is the all-pairs search's estimate, recorded
beside it. The rate is measured, not assumed: one CPU thread multiplying a tile-sized float32
block, once per process (about 0.2 s; AVX2 and AVX-512 boxes differ 2-5x). On GPU nodes the
products run on CUDA and the budget is conservative. Every mode's kept set is the exact one
(clustered: an exact partition, clustered.py), so the choice is about time only.
"""

from __future__ import annotations

import functools
import time

import numpy as np


@functools.lru_cache(maxsize=8)
def gemm_gflops_per_cpu(dim: int, tile: int = 2048) -> float:
    """Measured float32 GEMM rate of one CPU thread on a (tile x dim) @ (dim x tile) product
    (numpy's BLAS: the driver does not load torch for it; torch's CPU GEMM measured the same here)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((tile, max(dim, 1)), dtype=np.float32)
    with threadpool_limits(limits=1):
        (a @ a.T).sum()  # warm-up
        reps, start = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - start < 0.1:
            (a @ a.T).sum()
            reps += 1
        seconds = (time.perf_counter() - start) / reps
    return 2.0 * tile * tile * max(dim, 1) / seconds / 1e9


@functools.lru_cache(maxsize=8)
def bf16_gemm_gflops_per_cpu(dim: int, tile: int = 2048) -> float:
    """The same product in bfloat16 (torch on CPU, as the walk's bfloat16 products run it): twice
    float32's rate with AVX512-BF16 or AMX, a fraction of it where bfloat16 is emulated."""
    import torch

    a = torch.from_numpy(np.random.default_rng(0).standard_normal((tile, max(dim, 1)), dtype=np.float32))
    a = a.to(torch.bfloat16)
    out = torch.empty((tile, tile), dtype=torch.bfloat16)  # reused, as the searches' ProductBuffer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.matmul(a, a.T, out=out).amax(dim=1)  # warm-up
        reps, start = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - start < 0.1:
            torch.matmul(a, a.T, out=out).amax(dim=1)
            reps += 1
        seconds = (time.perf_counter() - start) / reps
    finally:
        torch.set_num_threads(threads)
    return 2.0 * tile * tile * max(dim, 1) / seconds / 1e9


def exact_seconds(rows: int, dim: int, cpus: float, gflops_per_cpu: float) -> float:
    """Estimated seconds of exact mode's similarity GEMM (the rest of the search is linear in pairs found)."""
    pairs = rows * (rows - 1) / 2
    return float(np.float64(pairs) * 2 * dim / (gflops_per_cpu * 1e9 * max(cpus, 1.0)))


BF16_MIN_ROWS = 50_000
BF16_MIN_GAIN = 1.3


def choose_precision(asked: str, rows: int, dim: int) -> tuple[str, dict]:
    """``dedup.products`` on this node: ``auto`` is bfloat16 where its measured rate is at least
    ``BF16_MIN_GAIN`` x float32's and the walk has at least ``BF16_MIN_ROWS`` rows (below that the
    walk takes seconds and torch's import alone two)."""
    if asked != "auto":
        return asked, {"precision": asked, "why": f"dedup.products: {asked}"}
    if rows < BF16_MIN_ROWS:
        return "float32", {"precision": "float32", "why": f"auto: fewer than {BF16_MIN_ROWS} rows"}
    float32, bf16 = gemm_gflops_per_cpu(dim), bf16_gemm_gflops_per_cpu(dim)
    precision = "bfloat16" if bf16 >= BF16_MIN_GAIN * float32 else "float32"
    why = f"auto: bfloat16 {bf16:.0f} GFLOP/s per CPU against float32's {float32:.0f} (needs {BF16_MIN_GAIN}x)"
    return precision, {
        "precision": precision,
        "why": why,
        "gflops_per_cpu": {"float32": round(float32, 1), "bfloat16": round(bf16, 1)},
    }
