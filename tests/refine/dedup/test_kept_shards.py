"""The walk against the kept set with its kept rows on shard actors (refine/dedup/kept_shards.py):
the same decisions as the single walk and the brute-force rule, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from platypus_ray.devtools.dedup_reference import greedy_reference
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.kept_shards import ShardedKept, start_shards, stop_shards
from platypus_ray.refine.dedup.kept_walk import kept_walk_pairs, walk_against_kept


def _families(seed: int, families: int = 30, size: int = 12, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    emb = np.repeat(rng.normal(size=(families, dim)), size, axis=0) + 0.35 * rng.normal(size=(families * size, dim))
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_sharded_walk_decides_as_the_single_walk_and_brute_force(ray_session, seed):
    emb = _families(seed, families=250)  # 3,000 rows: more than one chunk, so the shards are asked
    order = np.random.default_rng(seed).permutation(len(emb))
    single, _, _ = walk_against_kept(emb, order, 0.8)
    walked = kept_walk_pairs(EmbeddingBlocks.of(emb), order, 0.8, 0, 1, 120.0, shards=(3, 0.5))
    assert not isinstance(walked, Exception)
    decision, _pairs, _products, stats = walked
    where = stats["kept_shards"]
    assert (decision.keep == greedy_reference(emb, order, 0.8)).all()
    assert (decision.keep == single.keep).all() and (decision.matched == single.matched).all()
    assert np.allclose(decision.score, single.score, equal_nan=True, atol=1e-6)
    assert where["shards"] == 3 and sum(where["rows_per_shard"]) == int(decision.keep.sum())
    assert min(where["rows_per_shard"]) > 0 and sum(where["chunks_answered_per_node"].values()) > 0


def test_equal_scores_on_two_shards_go_to_the_earlier_kept_row(ray_session):
    """Kept rows a and b (0.6 apart) sit on different shards; q is at 0.894 to both, exactly:
    the single walk's rule (the earlier kept row) must hold across shards."""
    a, b, q = np.array([[1.0, 0.5], [1.0, -0.5], [1.0, 0.0]])
    for first, second in ((a, b), (b, a)):
        emb = np.array([first, second, q], dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        shards = start_shards(2, 2, 0.5, 60.0)
        try:
            sharded = ShardedKept(shards, 60.0)
            decision, _, _ = walk_against_kept(emb, np.arange(3), 0.8, chunk_rows=1, sharded=sharded)
            where = sharded.finish()
        finally:
            stop_shards(shards)
        assert decision.keep.tolist() == [True, True, False] and decision.matched[2] == 0
        assert where["rows_per_shard"] == [1, 1]
