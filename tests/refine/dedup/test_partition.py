"""The exact partition (k-means + the bisector rule): every pair >= t found exactly once, by brute force."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.devtools.dedup_reference import greedy_reference
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.clustered import ClusterSettings, clustered_pairs_above
from platypus_ray.refine.dedup.greedy import resolve_greedy
from tests.refine.dedup.test_kept_walk import families


def with_pairs_at(emb: np.ndarray, threshold: float, count: int, seed: int) -> np.ndarray:
    """``emb`` plus ``count`` rows each built at cosine ``threshold`` to an existing row (float32
    rounding lands the float64 cosine within ~1e-7 of it, on either side)."""
    rng = np.random.default_rng(seed)
    base = emb[rng.integers(0, len(emb), count)].astype(np.float64)
    noise = rng.normal(size=base.shape)
    noise -= np.einsum("ij,ij->i", noise, base)[:, None] * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    extra = threshold * base + np.sqrt(1 - threshold**2) * noise
    return np.concatenate([emb, extra.astype(np.float32)])


def brute_force_pairs(emb: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    x = emb.astype(np.float64)
    i, j = np.nonzero(np.triu(x @ x.T >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist()))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n_families=st.integers(1, 20),
    copies=st.integers(1, 20),
    spread=st.sampled_from([0.05, 0.2, 0.35, 0.6]),
    at_threshold=st.integers(0, 30),
    rows_per_cluster=st.sampled_from([2, 5, 16, 1000]),
    threshold=st.sampled_from([0.5, 0.8, 0.9, 0.95]),
    rows_per_block=st.sampled_from([7, 64, 4096]),
    shuffled=st.booleans(),
)
def test_the_partition_finds_every_pair_once_and_decides_as_brute_force(
    ray_session, seed, n_families, copies, spread, at_threshold, rows_per_cluster, threshold, rows_per_block, shuffled
):
    emb = with_pairs_at(families(seed, n_families, copies, spread), threshold, at_threshold, seed)
    n = len(emb)
    order = np.random.default_rng(seed).permutation(n) if shuffled else np.arange(n)
    rank = np.argsort(order)
    blocks = EmbeddingBlocks.from_matrix(emb, rows_per_block=rows_per_block)
    tiny = ClusterSettings(rows_per_cluster=rows_per_cluster, sample_per_cluster=3, tile=8, partition_always=True)
    found = clustered_pairs_above(blocks, threshold, tiny, 120, rank)
    pairs = list(zip(found.pairs.i.tolist(), found.pairs.j.tolist()))
    assert len(pairs) == len(set(pairs))  # each pair emitted once, by its later row's home cluster
    assert set(pairs) == brute_force_pairs(emb, threshold)
    assert found.search == "partition" and found.assignments_per_row >= 1.0
    decision = resolve_greedy(n, found.pairs, order)
    np.testing.assert_array_equal(decision.keep, greedy_reference(emb, order, threshold))


def test_the_partition_reports_when_all_pairs_cost_less(ray_session):
    """Spread rows at t = 0.5: the bisector rule copies rows into most clusters; all pairs run instead."""
    emb = families(1, 400, 1, 0.0, dim=16)
    found = clustered_pairs_above(EmbeddingBlocks.of(emb), 0.5, ClusterSettings(rows_per_cluster=20), 60)
    assert found.search == "all_pairs" and found.partition_work > found.all_pairs_work
    assert set(zip(found.pairs.i.tolist(), found.pairs.j.tolist())) == brute_force_pairs(emb, 0.5)


def test_a_pair_straddling_a_bisector_at_the_widest_gap_meets_in_the_later_rows_home(ray_session):
    """The worst case of the rule: y just on c_j's side of the bisector, x at cosine t from y as far
    from it as the sphere allows (sin of the pair's angle). x must be copied into y's home j."""
    import ray

    from platypus_ray.refine.dedup.clustered import _place

    for threshold in (0.5, 0.8, 0.9, 0.99):
        theta, alpha = np.arccos(threshold), 1e-4
        c_j, c_h = np.array([0.3, 0.0, 1.0]), np.array([-0.3, 0.0, 1.0])  # bisector: the plane x[0] = 0
        y = np.array([np.sin(alpha), np.cos(alpha), 0.0])
        x = np.array([np.sin(alpha - theta), np.cos(alpha - theta), 0.0])
        centroids = np.stack([c_h, c_j]) / np.linalg.norm(c_j)
        (rows, clusters, is_home), _ = ray.get(
            _place.options(num_returns=2).remote(np.stack([x, y]).astype(np.float32), centroids, threshold)
        )
        homes = {int(r): int(c) for r, c, h in zip(rows, clusters, is_home) if h}
        assert homes == {0: 0, 1: 1}
        assert 1 in clusters[rows == 0].tolist(), threshold  # x visits j
