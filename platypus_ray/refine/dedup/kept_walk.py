"""Semantic dedup against the kept set (``dedup.mode: kept``): the greedy rule computed directly.

A row is removed iff its cosine to some higher-priority *kept* row is >= threshold, so the
rows only ever need comparing with the kept rows before them, never with each other: the
Platypus notebook's one-vs-kept loop, done a chunk of rows at a time. Each chunk (in priority
order) is one GEMM against the rows kept so far, then the chunk's own rows that no earlier
kept row removed are settled among themselves in order. Work is rows x kept x dim: on dense
near-duplicate families (a few thousand kept out of hundreds of thousands) a small fraction
of the all-pairs search, and never more than half of it (each pair is looked at once, and
only when the earlier row was kept). Float32 products within ``_EPS`` of the threshold are
re-scored in float64, so the kept set is the float64 brute-force reference's, row for row.

On CPUs with bfloat16 dot products (AVX512-BF16, AMX) the products can run in bfloat16 at about
twice float32's rate (``dedup.products``; ``auto`` measures both on the walk's node): each score
is then off by at most :func:`bf16_margin` (~0.012), so every kept row within that margin of the
threshold or above is re-scored in float64. Decisions and matches stay the reference's exactly;
only the ``nearest`` cosine of a row with no such candidate is the bfloat16 one.

The walk runs as one Ray task that takes the vector blocks from the object store and uses a
node's cores (numpy's BLAS threads) or its GPU (torch); the driver gets back four numbers per row.
On a cluster of several nodes the kept rows are spread over one actor a node and the products run
there (:mod:`.kept_shards`); the walk task then only orders and settles. What it
does not give is every pair above the threshold: a removed row's pairs with other removed
rows are never computed (``exact`` mode enumerates them, at all-pairs cost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from platypus_ray.core.waits import wait_all
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.clustered import ClusterSettings, sampled_partition_work
from platypus_ray.refine.dedup.cost import choose_precision
from platypus_ray.refine.dedup.greedy import DedupDecision, _best_in_segments
from platypus_ray.refine.dedup.kept_shards import ShardedKept, start_shards, stop_shards
from platypus_ray.refine.dedup.similarity import _EPS, Pairs, ProductBuffer, best_over_tiles, bf16_margin

CHUNK_ROWS = 2048  # rows settled per step; their own greedy walk is chunk x chunk
KEPT_TILE = 16384  # kept rows per GEMM: a chunk x tile float32 product is 128 MiB


class OverBudget(Exception):
    """The walk's projected work passed its budget (``dedup.mode: auto`` then clusters instead)."""

    def __init__(self, rows_done: int, kept: int, projected_products: float, alternative: float | None = None):
        super().__init__(rows_done, kept, projected_products, alternative)
        self.rows_done, self.kept, self.projected_products = rows_done, kept, projected_products
        self.alternative = alternative  # the other search's estimated dot products, when it was asked


class _Numpy:
    """The walk's float32 products on CPU: numpy's BLAS (the worker loads no torch: 2 s a start)."""

    def __init__(self, n: int, dim: int):
        self.kept = np.empty((n, dim), dtype=np.float32)  # the kept vectors, in the order kept

    def put(self, picked: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(picked, dtype=np.float32)

    def best_kept(self, chunk: np.ndarray, n_kept: int, kept_tile: int) -> tuple[np.ndarray, np.ndarray]:
        """Each chunk row's best float32 cosine to the kept rows and its position among them."""
        return best_over_tiles(
            chunk, ((first, self.kept[first : min(first + kept_tile, n_kept)]) for first in range(0, n_kept, kept_tile))
        )

    def among(self, chunk: np.ndarray, rows: np.ndarray) -> np.ndarray:
        picked = chunk[rows]
        return (picked @ picked.T).astype(np.float64)

    def keep(self, chunk: np.ndarray, rows: np.ndarray, at: int) -> None:
        self.kept[at : at + len(rows)] = chunk[rows]


class _Bf16:
    """:class:`_Numpy`'s interface with the products against the kept rows in bfloat16 (torch on
    CPU), and the kept rows that could be >= threshold re-scored in float64 from ``emb``."""

    exact_candidates = True  # best_kept's scores at or near the threshold are float64 already

    def __init__(self, emb: np.ndarray, kept_rows: np.ndarray, threshold: float):
        import torch

        self.torch, self.emb, self.kept_rows, self.threshold = torch, emb, kept_rows, threshold
        self.kept = torch.empty((len(emb), emb.shape[1] if emb.ndim == 2 else 0), dtype=torch.bfloat16)
        self.low = threshold - bf16_margin(self.kept.shape[1])
        self.buffer = ProductBuffer()
        self.rescored = 0  # pairs re-scored in float64

    def put(self, picked: np.ndarray) -> tuple:
        picked = np.ascontiguousarray(picked, dtype=np.float32)
        return self.torch.from_numpy(picked).to(self.torch.bfloat16), picked

    def best_kept(self, chunk: tuple, n_kept: int, kept_tile: int) -> tuple[np.ndarray, np.ndarray]:
        """Each chunk row's best cosine to the kept rows and its position among them: float64 and
        exact for a row with a kept row at or above ``threshold - margin`` in bfloat16; for the
        others the bfloat16 best (below the threshold) and position 0, which the walk never reads."""
        torch, (queries, queries32) = self.torch, chunk
        best = np.full(len(queries32), -2.0)
        arg = np.zeros(len(queries32), dtype=np.int64)
        rows, positions = [], []
        for first in range(0, n_kept, kept_tile):
            scores = self.buffer.product(queries, self.kept[first : min(first + kept_tile, n_kept)].T)
            # no argmax (slow on bfloat16): a row's match is among its candidates, re-scored below
            tile_best = scores.amax(dim=1).float().numpy()
            np.maximum(best, tile_best, out=best)
            hot = np.flatnonzero(tile_best >= self.low)
            if len(hot):
                r, c = (t.numpy() for t in torch.nonzero(scores[torch.from_numpy(hot)] >= self.low, as_tuple=True))
                rows.append(hot[r])
                positions.append(c + first)
        if rows:
            r, c = np.concatenate(rows), np.concatenate(positions)
            exact = np.einsum(
                "ij,ij->i", queries32[r].astype(np.float64), self.emb[self.kept_rows[c]].astype(np.float64)
            )
            self.rescored += len(r)
            # per row: the highest, the earliest kept on a tie (a row's candidates are listed by position)
            hit, top = _best_in_segments(r, exact)
            best[hit], arg[hit] = exact[top], c[top]
        return best, arg

    def among(self, chunk: tuple, rows: np.ndarray) -> np.ndarray:
        picked = chunk[1][rows]
        return (picked @ picked.T).astype(np.float64)

    def keep(self, chunk: tuple, rows: np.ndarray, at: int) -> None:
        self.kept[at : at + len(rows)] = chunk[0][self.torch.from_numpy(rows)]


class _Torch:
    """The same as :class:`_Numpy` on a GPU (the kept vectors a torch tensor there)."""

    def __init__(self, n: int, dim: int, device: str):
        import torch

        self.torch, self.device = torch, device
        self.kept = torch.empty((n, dim), dtype=torch.float32, device=device)

    def put(self, picked: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(picked, dtype=np.float32)).to(self.device)

    def best_kept(self, chunk, n_kept: int, kept_tile: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        best = torch.full((len(chunk),), -2.0, device=chunk.device)
        arg = torch.zeros(len(chunk), dtype=torch.int64, device=chunk.device)
        for first in range(0, n_kept, kept_tile):
            tile_best, tile_arg = (chunk @ self.kept[first : min(first + kept_tile, n_kept)].T).max(dim=1)
            better = tile_best > best
            best = torch.where(better, tile_best, best)
            arg = torch.where(better, tile_arg + first, arg)
        return best.double().cpu().numpy(), arg.cpu().numpy()

    def among(self, chunk, rows: np.ndarray) -> np.ndarray:
        picked = chunk[self.torch.from_numpy(rows).to(self.device)]
        return (picked @ picked.T).double().cpu().numpy()

    def keep(self, chunk, rows: np.ndarray, at: int) -> None:
        self.kept[at : at + len(rows)] = chunk[self.torch.from_numpy(rows).to(self.device)]


def walk_against_kept(
    emb: np.ndarray,
    order: np.ndarray,
    threshold: float,
    chunk_rows: int = CHUNK_ROWS,
    kept_tile: int = KEPT_TILE,
    device: str = "cpu",
    max_products: float | None = None,
    sharded: ShardedKept | None = None,
    precision: str = "float32",
    counters: dict | None = None,
    alternative: Callable[[], float] | None = None,
) -> tuple[DedupDecision, np.ndarray, int]:
    """The greedy rule over ``emb`` (n x dim unit vectors) with rows visited in ``order``.

    Returns the decision (matched: the best-scoring earlier kept row of each removed row), each
    row's highest cosine to a kept row before it (-1 when none was before it), and the number
    of dot products computed. With ``max_products``, raises :class:`OverBudget` as soon as the
    work done plus the remaining rows times the rows kept so far plus the next chunk's own
    pairs (a lower bound of what is left) passes it. ``device``: ``cpu`` (numpy) or a torch
    CUDA device; ``sharded``: the kept rows and their products on :mod:`.kept_shards`' actors;
    ``precision`` of the products: ``float32`` or ``bfloat16`` (CPU only, see :class:`_Bf16`), which
    counts its float64 re-scores into ``counters["rescored_pairs"]``. ``alternative``: asked once,
    when the projection first passes ``max_products``, for the dot products the other search would
    cost; the walk goes on while its projection stays below that too."""
    n, dim = emb.shape if emb.ndim == 2 else (len(emb), 0)
    keep = np.zeros(n, dtype=bool)
    matched = np.full(n, -1, dtype=np.int64)
    score = np.full(n, np.nan)
    nearest = np.full(n, -1.0)
    kept_rows = np.empty(n, dtype=np.int64)
    products_of: _Numpy | _Bf16 | _Torch | ShardedKept
    if sharded is not None:
        products_of = sharded
    elif device != "cpu":
        products_of = _Torch(n, dim, device)
    else:
        products_of = _Bf16(emb, kept_rows, threshold) if precision == "bfloat16" else _Numpy(n, dim)
    exact_near = getattr(products_of, "exact_candidates", False)
    n_kept, products = 0, 0
    other: float | None = None
    for start in range(0, n, chunk_rows):
        rows = order[start : start + chunk_rows]
        projected = products + (n - start) * n_kept + len(rows) * (len(rows) - 1) // 2
        if max_products is not None and projected > max_products:
            if alternative is not None and other is None:
                other = alternative()
                max_products = max(max_products, other)
            if projected > max_products:
                raise OverBudget(start, n_kept, projected, other)
        picked = emb[rows]  # one gather of the chunk's vectors, used in both precisions
        chunk64 = picked.astype(np.float64)
        chunk: Any = products_of.put(picked)  # each products class reads back what its put gave
        best, arg = products_of.best_kept(chunk, n_kept, kept_tile)
        products += len(rows) * n_kept
        near = np.flatnonzero(np.abs(best - threshold) < _EPS)  # float64 decides these, as in the reference
        if len(near) and not exact_near:
            best[near], arg[near] = _best_kept64(emb, kept_rows[:n_kept], chunk64[near], kept_tile)
        gone = best >= threshold
        matched[rows[gone]] = kept_rows[arg[gone]]
        score[rows[gone]] = best[gone]
        nearest[rows] = np.where(n_kept > 0, best, -1.0)
        open_rows = np.flatnonzero(~gone)
        among = products_of.among(chunk, open_rows) if len(open_rows) else None
        newly = _settle_among(chunk64, among, open_rows, threshold, rows, keep, matched, score, nearest)
        products += len(open_rows) * (len(open_rows) - 1) // 2
        kept_rows[n_kept : n_kept + len(newly)] = rows[newly]
        products_of.keep(chunk, newly, n_kept)
        n_kept += len(newly)
    if counters is not None and isinstance(products_of, _Bf16):
        counters["rescored_pairs"] = products_of.rescored
    if counters is not None and other is not None:
        counters["clustered_estimate_products"] = other
    return DedupDecision(keep, matched, score), nearest, products


def _best_kept64(
    emb: np.ndarray, kept_rows: np.ndarray, queries64: np.ndarray, kept_tile: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best kept row in float64 for a few rows, a tile of kept rows at a time (bounded memory)."""
    return best_over_tiles(
        queries64,
        (
            (first, emb[kept_rows[first : first + kept_tile]].astype(np.float64))
            for first in range(0, len(kept_rows), kept_tile)
        ),
    )


def _settle_among(
    chunk64: np.ndarray,
    among: np.ndarray | None,
    open_rows: np.ndarray,
    threshold: float,
    rows: np.ndarray,
    keep: np.ndarray,
    matched: np.ndarray,
    score: np.ndarray,
    nearest: np.ndarray,
) -> np.ndarray:
    """The greedy walk over a chunk's rows that no earlier kept row removed (``open_rows``, in
    priority order; ``among``: their float32 cosines to each other): a row goes iff an earlier
    one of them that stayed is similar. Returns the chunk positions kept."""
    if len(open_rows) == 0:
        return open_rows
    if among is None:  # the caller computes it for every non-empty open_rows
        raise ValueError("open rows need their cosines among each other")
    among[np.triu_indices(len(open_rows))] = -2.0  # only earlier rows count
    stays = np.ones(len(open_rows), dtype=bool)
    for a in np.flatnonzero((among >= threshold - _EPS).any(axis=1)):
        candidates = np.flatnonzero(stays[:a] & (among[a, :a] >= threshold - _EPS))
        if len(candidates) == 0:
            continue
        exact = chunk64[open_rows[candidates]] @ chunk64[open_rows[a]]
        pick = int(np.argmax(exact))
        if exact[pick] >= threshold:
            stays[a] = False
            row = rows[open_rows[a]]
            matched[row], score[row] = rows[open_rows[candidates[pick]]], float(exact[pick])
    # a row's nearest kept row before it may sit in its own chunk
    earlier_kept = np.where(stays[None, :], among, -2.0).max(axis=1)
    positions = rows[open_rows]
    nearest[positions] = np.maximum(nearest[positions], np.where(earlier_kept > -2.0, earlier_kept, -1.0))
    keep[positions[stays]] = True
    return open_rows[stays]


@ray.remote
def _walk_task(
    refs: list,
    order: np.ndarray | None,
    threshold: float,
    use_gpu: bool,
    threads: int,
    max_products: float | None,
    shards: list | None = None,
    timeout_s: float = 0.0,
    precision: str = "float32",
    clusters: ClusterSettings | None = None,
):
    from threadpoolctl import threadpool_limits

    from platypus_ray.core.devices import actor_device

    emb = np.concatenate([ray.get(ref) for ref in refs]) if refs else np.zeros((0, 0), dtype=np.float32)
    order = np.arange(len(emb)) if order is None else order
    device = actor_device("cuda" if use_gpu else "cpu")
    sharded = ShardedKept(shards, timeout_s) if shards else None
    stats: dict = {}
    try:
        with threadpool_limits(limits=max(1, threads)):  # a worker's BLAS starts at one thread (OMP_NUM_THREADS)
            if device == "cpu" and not sharded:
                precision, stats["products"] = choose_precision(
                    precision, len(emb), emb.shape[-1] if emb.ndim == 2 else 0
                )
            else:
                precision = "float32"
            n = len(emb)
            alternative = (
                (lambda: min(sampled_partition_work(emb, threshold, clusters), n * (n - 1) / 2)) if clusters else None
            )
            decision, nearest, products = walk_against_kept(
                emb,
                order,
                threshold,
                device=device,
                max_products=max_products,
                sharded=sharded,
                precision=precision,
                counters=stats,
                alternative=alternative,
            )
    except OverBudget as over:  # a value, not an error: Ray would print a traceback for a raised one
        return over
    if "rescored_pairs" in stats:
        stats["products"]["rescored_pairs"] = stats.pop("rescored_pairs")
    if sharded:
        stats["kept_shards"] = sharded.finish()
    return decision, nearest.astype(np.float32), products, stats  # the pairs keep nearest in float32


def kept_walk_pairs(
    blocks: EmbeddingBlocks,
    order: np.ndarray | None,
    threshold: float,
    num_gpus: float,
    cpus: int,
    timeout_s: float,
    max_products: float | None = None,
    shards: tuple[int, float] = (0, 0.0),
    precision: str = "auto",
    clusters: ClusterSettings | None = None,
) -> tuple[DedupDecision, Pairs, int, dict] | OverBudget:
    """:func:`walk_against_kept` over object-store blocks in one Ray task on ``cpus`` cores of one
    node (its BLAS threads) or one GPU; with ``shards`` (count, CPUs each), count >= 2, the kept
    rows and their products on that many actors spread over the nodes (the walk task then holds
    no CPU). The pairs are each removed row with its kept match; the dict says where the shards ran
    (``kept_shards``) and which ``products`` precision ran and why. ``order`` None: input order
    (the task makes it, so the driver neither holds nor sends it). With ``clusters``, the walk that
    passes ``max_products`` first estimates the clustered search from a sample of its vectors
    (:func:`.clustered.sampled_partition_work`, capped at all pairs) and goes on below that."""
    count, shard_cpus = shards
    actors = start_shards(count, blocks.dim, shard_cpus, timeout_s) if count >= 2 and not num_gpus else []
    try:
        walk_cpus = 0 if actors else cpus if not num_gpus else 1
        task = _walk_task.options(num_cpus=walk_cpus, num_gpus=1 if num_gpus else 0)
        ref = task.remote(
            blocks.refs,
            order,
            threshold,
            bool(num_gpus),
            cpus,
            max_products,
            actors or None,
            timeout_s,
            precision,
            clusters,
        )
        (result,) = wait_all([ref], timeout_s)
    finally:
        stop_shards(actors)
    if isinstance(result, OverBudget):
        return result
    decision, nearest, products, walk_stats = result
    gone = np.flatnonzero(~decision.keep)
    hi, lo = decision.matched[gone], gone
    i, j = np.minimum(hi, lo), np.maximum(hi, lo)
    pairs = Pairs(i, j, decision.score[gone], nearest)
    return decision, pairs, products, walk_stats
