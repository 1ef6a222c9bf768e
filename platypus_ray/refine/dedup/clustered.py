"""Clustered semantic dedup: an exact partition (k-means + ClusterJoin's bisector rule), exact inside.

1. **k-means** (spherical, torch) on a random sample of the rows gives ``k`` unit centroids.
2. **place** (one Ray task per embedding block): a row ``x`` lives in its nearest centroid's
   cluster ``h`` (its home) and is copied into cluster ``j`` iff its distance to the bisector of
   ``c_h`` and ``c_j`` is at most ``eps = sqrt(2 - 2t)``, the distance of unit vectors at cosine
   ``t``: ``x.c_h - x.c_j <= eps * ||c_j - c_h||`` (ClusterJoin, Das Sarma et al., VLDB 2014).
   For a pair at distance <= eps, the later row's home is on the far side of that bisector, so
   the earlier row is in the later row's home cluster: every pair >= t meets there.
3. **shuffle**: each block task splits its entries into ``G`` groups of clusters (balanced by
   work); group ``g``'s task receives only its pieces, never the whole matrix.
4. **exact inside**: in each cluster, each home row is compared with the members of higher
   priority (float64 re-scoring near the threshold as in exact mode), so every pair is emitted
   once, by its later row, in that row's home cluster. No closure over kept rows is needed.

The driver learns the copies per cluster first. At t = 0.8 (eps = 0.63) in 256-384 dimensions
diverse text copies nearly every row into every cluster, so the partition's work (home rows x
members, summed) can pass all pairs'; then the tiled all-pairs search runs instead (both exact).
The driver holds block references, the centroids, the per-cluster counts and the pair graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from platypus_ray.core.waits import as_completed, wait_all
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.similarity import _EPS, HeldPairs, PairBudget, Pairs, _exact_scores, all_pairs_above

if TYPE_CHECKING:  # torch loads in the tasks that use it, not in the driver (1 s of every refine start)
    import torch

# Slack of the bisector test in cosine units, on the side of more copies: float32 products of the
# placement err by ~1e-6, so a pair at exactly t is never lost to rounding.
_BISECTOR_SLACK = 1e-4


@dataclass(frozen=True)
class ClusterSettings:
    rows_per_cluster: int = 1000
    kmeans_iterations: int = 12
    sample_per_cluster: int = 40  # k-means training rows per centroid
    tile: int = 2048
    seed: int = 0
    per_row: int | None = None  # with a rank: each row's best higher-priority neighbours kept (see similarity)
    max_pairs: int = 0  # ... once more than this many pairs are held (0: from the start)
    partition_always: bool = False  # tests: the partitioned search even where all pairs cost less


@dataclass
class ClusteredPairs:
    pairs: Pairs
    clusters: int
    assignments_per_row: float  # mean clusters a row is placed in: 1 + the replication factor
    largest_cluster: int  # members (home rows and copies) of the largest cluster
    partition_work: float = 0.0  # dot products of the partitioned search: home rows x members, summed
    all_pairs_work: float = 0.0  # n (n - 1) / 2
    search: str = "partition"  # or "all_pairs": the partition would have cost more

    @property
    def replication(self) -> float:
        return self.assignments_per_row - 1.0


def clustered_pairs_above(
    blocks: EmbeddingBlocks,
    threshold: float,
    settings: ClusterSettings,
    timeout_s: float,
    rank: np.ndarray | None = None,
) -> ClusteredPairs:
    """Every pair >= threshold (exact: the bisector rule places both rows of each in one cluster).

    ``rank``: priority (lower first; input order without it); each pair is found in the home cluster
    of its lower-priority row. With ``settings.per_row``, each row keeps only its ``per_row`` best
    neighbours of higher priority, as the exact search does, so a template filled in thousands of
    times stays linear in memory; ``Pairs.incomplete`` marks the rows that had more."""
    n = blocks.n
    rank = np.arange(n) if rank is None else rank
    k = clusters_for(n, settings)
    centroids = ray.put(_kmeans(blocks, k, settings, timeout_s))
    placed = [_place.options(num_returns=2).remote(ref, centroids, threshold) for ref in blocks.refs]
    counts = wait_all([c for _, c in placed], timeout_s)
    home = np.sum([c[0] for c in counts], axis=0) if counts else np.zeros(k, np.int64)
    members = np.sum([c[1] for c in counts], axis=0) if counts else np.zeros(k, np.int64)
    work, all_pairs = float((home.astype(np.float64) * members).sum()), n * (n - 1) / 2
    found = ClusteredPairs(
        Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.full(n, -1.0, np.float32)),
        k,
        float(members.sum() / max(n, 1)),
        int(members.max(initial=0)),
        work,
        all_pairs,
    )
    budget = PairBudget(settings.per_row, settings.max_pairs) if settings.per_row else None
    if (
        work > all_pairs and not settings.partition_always
    ):  # diverse text at t = 0.8: nearly every row is copied into every cluster
        found.search = "all_pairs"
        found.pairs = all_pairs_above(
            blocks, threshold, settings.tile, 0.0, timeout_s, rank, settings.per_row, settings.max_pairs
        )
        return found
    groups = max(1, min(k, max(4 * int(ray.cluster_resources().get("CPU", 1)), int(members.sum() // 50000) + 1)))
    group_of_cluster = _balance(home.astype(np.float64) * members, groups)
    split = _split.options(num_returns=groups)
    # num_returns=groups: a list of refs, one ref when groups == 1 (Ray's stubs say always one ObjectRef)
    split_refs: list[Any] = [
        split.remote(ref, entries, group_of_cluster, groups, int(start))
        for ref, (entries, _), start in zip(blocks.refs, placed, blocks.offsets[:-1])
    ]
    pieces = [p if isinstance(p, list) else [p] for p in split_refs]
    rank_ref = ray.put(rank)
    refs = [
        _pairs_in_group.remote(threshold, settings.tile, rank_ref, budget, *[p[g] for p in pieces])
        for g in range(groups)
    ]
    held = HeldPairs(n, budget)
    nearest = np.full(n, -1.0, dtype=np.float32)
    for hi, lo, score, near_ids, near, counted_rows, counted, task_bounded in as_completed(refs, timeout_s):
        held.add(hi, lo, score, task_bounded)
        np.maximum.at(nearest, near_ids, near)
        np.add.at(held.counts, counted_rows, counted)
    hi, lo, score = held.pairs()
    found.pairs = Pairs(np.minimum(hi, lo), np.maximum(hi, lo), score, nearest, *held.bound_fields())
    return found


def clusters_for(rows: int, settings: ClusterSettings) -> int:
    return max(1, min(rows // max(settings.rows_per_cluster, 1), 65536))


def sampled_partition_work(
    emb: np.ndarray, threshold: float, settings: ClusterSettings, sample_rows: int = 50_000
) -> float:
    """The partition's work (home rows x members, summed over clusters: dot products) projected from
    a random sample of ``emb``: k-means as the full run does it, the sample placed by the bisector
    rule, each count scaled by n / sample. Run where the vectors are (the walk's task)."""
    n = len(emb)
    k = clusters_for(n, settings)
    rng = np.random.default_rng(settings.seed + 1)
    picks = np.sort(rng.choice(n, size=min(n, max(sample_rows, k * settings.sample_per_cluster)), replace=False))
    sample = np.ascontiguousarray(emb[picks])
    _, (home, members) = place_rows(sample, _kmeans_on(sample, k, settings), threshold)
    scale = n / max(len(picks), 1)
    return float((home.astype(np.float64) * members).sum() * scale * scale)


def _kmeans(blocks: EmbeddingBlocks, k: int, settings: ClusterSettings, timeout_s: float) -> np.ndarray:
    """Spherical k-means on a random sample of rows (gathered from every block)."""
    rng = np.random.default_rng(settings.seed)
    want = min(blocks.n, k * settings.sample_per_cluster)
    picks = np.sort(rng.choice(blocks.n, size=want, replace=False))
    return _kmeans_on(blocks.gather(picks, timeout_s), k, settings)


def _kmeans_on(rows: np.ndarray, k: int, settings: ClusterSettings) -> np.ndarray:
    import torch

    rng = np.random.default_rng(settings.seed)
    want = k * settings.sample_per_cluster
    sample = torch.from_numpy(rows if len(rows) <= want else rows[np.sort(rng.choice(len(rows), want, replace=False))])
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


def _balance(work: np.ndarray, groups: int) -> np.ndarray:
    """Clusters to groups, the most work first onto the lightest group."""
    load = np.zeros(groups)
    group_of = np.zeros(len(work), dtype=np.int64)
    for c in np.argsort(-work, kind="stable"):
        g = int(np.argmin(load))
        group_of[c] = g
        load[g] += float(work[c])
    return group_of


_PLACE_CELLS = 1 << 23  # rows x clusters per step of _place: its three float64 arrays stay near 200 MB


def place_rows(block: np.ndarray, centroids: np.ndarray, threshold: float, chunk: int | None = None):
    """The block's entries (row in block, cluster, 1 if home) by the bisector rule, and per cluster
    (home rows, members): the counts the driver plans with."""
    k = len(centroids)
    chunk = chunk or max(64, _PLACE_CELLS // max(k, 1))  # rows x k per step, whatever k is
    eps = np.sqrt(max(2.0 - 2.0 * (threshold - _EPS), 0.0))
    rows, clusters, is_home = [], [], []
    for s in range(0, len(block), chunk):
        sims = block[s : s + chunk] @ centroids.T
        home = sims.argmax(axis=1)
        gap = sims[np.arange(len(sims)), home][:, None] - sims  # (||x-c_j||^2 - ||x-c_h||^2) / 2
        between = np.sqrt(np.maximum(2.0 - 2.0 * (centroids[home] @ centroids.T), 0.0))  # ||c_j - c_h||: unit
        r, c = np.nonzero(gap <= eps * between + _BISECTOR_SLACK)
        rows.append(r + s)
        clusters.append(c)
        is_home.append(c == home[r])
    entries = tuple(np.concatenate(p) if p else np.empty(0, np.int64) for p in (rows, clusters, is_home))
    counts = (np.bincount(entries[1][entries[2]], minlength=k), np.bincount(entries[1], minlength=k))
    return entries, counts


_place = ray.remote(place_rows)


@ray.remote
def _split(block: np.ndarray, entries: tuple, group_of_cluster: np.ndarray, groups: int, start: int):
    """The block's (row id, cluster, home flag, vector) entries, one piece per group of clusters."""
    rows, cluster, is_home = entries
    group = group_of_cluster[cluster]
    order = np.argsort(group, kind="stable")
    rows, cluster, is_home, group = rows[order], cluster[order], is_home[order], group[order]
    bounds = np.searchsorted(group, np.arange(groups + 1))
    pieces = [
        (rows[a:b] + start, cluster[a:b], is_home[a:b], block[rows[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return pieces if groups > 1 else pieces[0]


@ray.remote
def _pairs_in_group(threshold: float, tile: int, rank: np.ndarray, budget: PairBudget | None, *pieces):
    """In each cluster of this group: every pair >= threshold of a home row and a member of higher
    priority, as (hi, lo) by priority; each home row's best cosine to such a member; and, with a
    ``budget``, (row, candidate count) of the lo rows, pairs bounded per row once this task alone
    holds more than the budget."""
    import torch

    ids, cluster, is_home = (np.concatenate([p[k] for p in pieces]) for k in range(3))
    vectors = np.concatenate([p[3] for p in pieces]) if len(ids) else np.zeros((0, 0), np.float32)
    order = np.argsort(cluster, kind="stable")
    ids, cluster, is_home, vectors = ids[order], cluster[order], is_home[order], vectors[order]
    bounds = np.flatnonzero(np.diff(cluster, prepend=-1, append=-2))
    held = HeldPairs(0, budget)  # candidate counts: this task returns its own
    near_ids, near, counted = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        members = torch.from_numpy(vectors[a:b])
        member_rank = torch.from_numpy(rank[ids[a:b]])
        homes = np.flatnonzero(is_home[a:b])
        for s in range(0, len(homes), tile):  # a tile of home rows against all members: bounded memory
            local = homes[s : s + tile]
            sims = members[torch.from_numpy(local)] @ members.T
            sims[member_rank[None, :] >= member_rank[torch.from_numpy(local)][:, None]] = -2.0  # earlier only
            near_ids.append(ids[a:b][local])
            near.append(sims.max(dim=1).values.numpy())
            ti, tj = (t.numpy() for t in torch.nonzero(sims >= threshold - _EPS, as_tuple=True))
            li, lj = local[ti], tj
            score = _rescored(vectors[a:b], li, lj, sims[ti, tj].numpy().astype(np.float64), threshold)
            exact = score >= threshold
            lo, hi, score = ids[a:b][li[exact]], ids[a:b][lj[exact]], score[exact]
            if budget is not None:
                counted.append(np.unique(lo, return_counts=True))
            held.add(hi, lo, score)  # bounded while the cluster is walked: a template stays linear
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.empty(0, dtype)
    hi, lo, score = held.pairs()
    return (
        hi,
        lo,
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
