"""Clustered semantic dedup for corpora too large for all-pairs: k-means partitions, exact inside.

1. **k-means** (spherical, torch) on a random sample of the rows gives ``k`` centroids.
2. **assign**: each row goes to its nearest centroid and to every other centroid within
   ``margin`` of that one (up to ``max_assign``), so a pair that straddles a border is
   still seen together in some cluster. One Ray task per embedding block.
3. **shuffle**: each block task splits its rows into ``G`` groups of clusters (balanced by
   size); group ``g``'s task receives only its pieces, never the whole matrix.
4. **exact inside**: each group task finds every pair >= threshold within each of its
   clusters (tiled, float64 re-scoring near the threshold as in exact mode). (Comparing only
   a cluster's nearest-centroid rows with its visitors is ~3x cheaper but measured 0.987
   pair recall where this reaches 0.998 at the same margin.)

The union of pairs feeds the same greedy rule as exact mode. A pair whose rows share no
cluster is missed: :mod:`platypus_ray.refine.dedup.recall` measures how often on every run.
The driver holds block references, the centroids, a few ints per row and the pair graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from platypus_ray.core.waits import as_completed, wait_all
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.similarity import _EPS, HeldPairs, PairBudget, Pairs, _exact_scores

if TYPE_CHECKING:  # torch loads in the tasks that use it, not in the driver (1 s of every refine start)
    import torch


@dataclass(frozen=True)
class ClusterSettings:
    rows_per_cluster: int = 1000
    # extra centroids within this cosine of the nearest one; on 1M perturbed Alpaca rows 0.06 found
    # 0.991 of all pairs, 0.08 0.996 for 2% more time (100k: 0.994 / 0.997, 16% more)
    margin: float = 0.08
    max_assign: int = 4
    kmeans_iterations: int = 12
    sample_per_cluster: int = 40  # k-means training rows per centroid
    tile: int = 2048
    seed: int = 0
    per_row: int | None = None  # with a rank: each row's best higher-priority neighbours kept (see similarity)
    max_pairs: int = 0  # ... once more than this many pairs are held (0: from the start)


@dataclass
class ClusteredPairs:
    pairs: Pairs
    clusters: int
    assignments_per_row: float  # mean clusters a row was placed in (cost of the margin)
    largest_cluster: int


def clustered_pairs_above(
    blocks: EmbeddingBlocks,
    threshold: float,
    settings: ClusterSettings,
    timeout_s: float,
    rank: np.ndarray | None = None,
) -> ClusteredPairs:
    """Every pair >= threshold whose rows share a cluster; nearest-neighbour cosine within clusters.

    With ``rank`` and ``settings.per_row``, each row keeps only its ``per_row`` best neighbours of
    higher priority, as the exact search does, so a template filled in thousands of times stays
    linear in memory; ``Pairs.incomplete`` marks the rows that had more."""
    n = blocks.n
    k = max(1, min(n // max(settings.rows_per_cluster, 1), 65536))
    centroids = ray.put(_kmeans(blocks, k, settings, timeout_s))
    assigned = [_assign.remote(ref, centroids, settings.margin, settings.max_assign) for ref in blocks.refs]
    clusters_of = wait_all(assigned, timeout_s)  # per block: (rows, max_assign) int32, -1 = none
    sizes = np.bincount(np.concatenate([c[c >= 0] for c in clusters_of] or [np.empty(0, np.int32)]), minlength=k)
    del clusters_of
    groups = max(1, min(k, max(4 * int(ray.cluster_resources().get("CPU", 1)), int(sizes.sum() // 50000) + 1)))
    group_of_cluster = _balance(sizes, groups)
    split = _split.options(num_returns=groups)
    # num_returns=groups: a list of refs, one ref when groups == 1 (Ray's stubs say always one ObjectRef)
    split_refs: list[Any] = [
        split.remote(ref, a, group_of_cluster, groups, int(start))
        for ref, a, start in zip(blocks.refs, assigned, blocks.offsets[:-1])
    ]
    pieces = [p if isinstance(p, list) else [p] for p in split_refs]
    budget = PairBudget(settings.per_row, settings.max_pairs) if settings.per_row and rank is not None else None
    rank_ref = ray.put(rank if budget else None)
    refs = [
        _pairs_in_group.remote(threshold, settings.tile, rank_ref, budget, *[p[g] for p in pieces])
        for g in range(groups)
    ]
    held = HeldPairs(n, budget, distinct=True)
    nearest = np.full(n, -1.0, dtype=np.float32)
    for i, j, score, near_ids, near, counted_rows, counted, task_bounded in as_completed(refs, timeout_s):
        held.add(i, j, score, task_bounded)
        np.maximum.at(nearest, near_ids, near)
        # a pair shared by two clusters counts twice here: "incomplete" errs towards an exact check
        np.add.at(held.counts, counted_rows, counted)
    i, j, score = held.pairs()
    pairs = Pairs(np.minimum(i, j), np.maximum(i, j), score, nearest, *held.bound_fields())
    return ClusteredPairs(pairs, k, float(sizes.sum() / max(n, 1)), int(sizes.max(initial=0)))


def _kmeans(blocks: EmbeddingBlocks, k: int, settings: ClusterSettings, timeout_s: float) -> np.ndarray:
    """Spherical k-means on a random sample of rows (gathered from every block)."""
    import torch

    rng = np.random.default_rng(settings.seed)
    want = min(blocks.n, k * settings.sample_per_cluster)
    picks = np.sort(rng.choice(blocks.n, size=want, replace=False))
    sample = torch.from_numpy(blocks.gather(picks, timeout_s))
    generator = torch.Generator().manual_seed(settings.seed)
    centroids = sample[torch.randperm(len(sample), generator=generator)[:k]].clone()
    for _ in range(settings.kmeans_iterations):
        nearest = _argmax_rows(sample, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, sample)
        empty = sums.norm(dim=1) == 0
        sums[empty] = centroids[empty]  # a centroid that lost every row stays where it was
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids.numpy()


def _argmax_rows(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    import torch

    return torch.cat([(x[s : s + chunk] @ centroids.T).argmax(dim=1) for s in range(0, len(x), chunk)])


def _balance(sizes: np.ndarray, groups: int) -> np.ndarray:
    """Clusters to groups, largest first onto the lightest group (work ~ size^2)."""
    load = np.zeros(groups)
    group_of = np.zeros(len(sizes), dtype=np.int64)
    for c in np.argsort(-sizes, kind="stable"):
        g = int(np.argmin(load))
        group_of[c] = g
        load[g] += float(sizes[c]) ** 2
    return group_of


@ray.remote
def _assign(block: np.ndarray, centroids: np.ndarray, margin: float, max_assign: int) -> np.ndarray:
    """Per row: the nearest centroid and the others within ``margin`` (-1 pads)."""
    import torch

    sims = torch.from_numpy(np.array(block)) @ torch.from_numpy(np.array(centroids)).T  # copies: objects are read-only
    top = torch.topk(sims, k=min(max_assign, sims.shape[1]), dim=1)
    within = top.values >= top.values[:, :1] - margin
    clusters = torch.where(within, top.indices, torch.full_like(top.indices, -1)).numpy().astype(np.int32)
    return clusters


@ray.remote
def _split(block: np.ndarray, clusters: np.ndarray, group_of_cluster: np.ndarray, groups: int, start: int):
    """The block's (row id, cluster, vector) entries, one piece per group of clusters."""
    rows, slot = np.nonzero(clusters >= 0)
    cluster = clusters[rows, slot].astype(np.int64)
    group = group_of_cluster[cluster]
    order = np.argsort(group, kind="stable")
    rows, cluster, group = rows[order], cluster[order], group[order]
    bounds = np.searchsorted(group, np.arange(groups + 1))
    pieces = [(rows[a:b] + start, cluster[a:b], block[rows[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]
    return pieces if groups > 1 else pieces[0]


@ray.remote
def _pairs_in_group(threshold: float, tile: int, rank: np.ndarray | None, budget: PairBudget | None, *pieces):
    """Pairs >= threshold inside each cluster of this group, each row's best in-cluster cosine and,
    with a ``budget``, (row, candidate count) of the lower-priority rows, pairs as (hi, lo) by
    priority, bounded per row once this task alone holds more than the budget."""
    import torch

    ids, cluster = (np.concatenate([p[k] for p in pieces]) for k in range(2))
    vectors = np.concatenate([p[2] for p in pieces]) if len(ids) else np.zeros((0, 0), np.float32)
    order = np.argsort(cluster, kind="stable")
    ids, cluster, vectors = ids[order], cluster[order], vectors[order]
    bounds = np.flatnonzero(np.diff(cluster, prepend=-1, append=-2))
    held = HeldPairs(0, budget, distinct=True)  # candidate counts: this task returns its own
    near_ids, near, counted = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        x = torch.from_numpy(vectors[a:b])
        best = torch.full((b - a,), -1.0)
        for s in range(0, b - a, tile):
            sims = x[s : s + tile] @ x.T
            local = torch.arange(s, s + len(sims))
            sims[local - s, local] = -2.0  # a row is not its own neighbour
            best[s : s + len(sims)] = sims.max(dim=1).values
            ti, tj = torch.nonzero(torch.triu(sims >= threshold - _EPS, diagonal=s + 1), as_tuple=True)
            li, lj = (ti + s).numpy(), tj.numpy()
            score = _rescored(vectors[a:b], li, lj, sims[li - s, lj].numpy().astype(np.float64), threshold)
            exact = score >= threshold
            gi, gj, score = ids[a:b][li[exact]], ids[a:b][lj[exact]], score[exact]
            if budget is not None:
                if rank is None:  # the caller ships the rows' rank with every budget
                    raise ValueError("a pair budget needs the rows' rank")
                i_first = rank[gi] < rank[gj]
                gi, gj = np.where(i_first, gi, gj), np.where(i_first, gj, gi)
                counted.append(np.unique(gj, return_counts=True))
            held.add(gi, gj, score)  # bounded while the cluster is walked: a template stays linear
        near_ids.append(ids[a:b])
        near.append(best.numpy())
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.empty(0, dtype)
    i, j, score = held.pairs()
    return (
        i,
        j,
        score,
        cat(near_ids, np.int64),
        cat(near, np.float32),
        cat([c[0] for c in counted], np.int64),
        cat([c[1] for c in counted], np.int64),
        held.bounding,
    )


def _rescored(x: np.ndarray, i: np.ndarray, j: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
    """Cosines within _EPS of the threshold recomputed in float64, as exact mode does."""
    close = np.abs(score - threshold) < _EPS
    if close.any():
        score[close] = _exact_scores(x, i[close], j[close])
    return score
