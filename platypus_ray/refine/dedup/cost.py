"""What ``dedup.mode: auto`` weighs: the estimated time of the exact all-pairs search on this cluster.

Exact mode's work is the similarity GEMM over every pair, ``n (n - 1) / 2`` dot products of
``dim`` multiply-adds, spread over the cluster's CPUs (one tile task a CPU). The rate is measured,
not assumed: one CPU thread multiplying a tile-sized float32 block, once per process (about 0.2 s;
AVX2 and AVX-512 boxes differ 2-5x). On GPU nodes the tiles run on CUDA and the estimate is an upper
bound. Since clustered mode's kept set equals exact's (pair_search.close_over_kept), the choice is
about time only: exact whenever its estimate fits ``dedup.auto_exact_budget_s``.
"""

from __future__ import annotations

import functools
import time

import numpy as np


@functools.lru_cache(maxsize=8)
def gemm_gflops_per_cpu(dim: int, tile: int = 2048) -> float:
    """Measured float32 GEMM rate of one CPU thread on a (tile x dim) @ (dim x tile) product."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(tile, max(dim, 1))
        (a @ a.T).sum()  # warm-up
        reps, start = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - start < 0.1:
            (a @ a.T).sum()
            reps += 1
        seconds = (time.perf_counter() - start) / reps
    finally:
        torch.set_num_threads(threads)
    return 2.0 * tile * tile * max(dim, 1) / seconds / 1e9


def exact_seconds(rows: int, dim: int, cpus: float, gflops_per_cpu: float) -> float:
    """Estimated seconds of exact mode's similarity GEMM (the rest of the search is linear in pairs found)."""
    pairs = rows * (rows - 1) / 2
    return float(np.float64(pairs) * 2 * dim / (gflops_per_cpu * 1e9 * max(cpus, 1.0)))
