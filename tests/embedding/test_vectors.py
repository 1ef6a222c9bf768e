"""Vectors in object-store blocks: assembled from batches in any order, read back exactly by tasks."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from platypus_ray.embedding.vectors import DimensionMismatch, EmbeddingBlocks, assemble


def test_blocks_assembled_from_shuffled_batches_read_back_exactly(ray_session):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    perm = rng.permutation(len(x))  # the actors' length order, not key order
    batches = [ray.put({"key": perm[a : a + 37], "embedding": x[perm[a : a + 37]]}) for a in range(0, len(x), 37)]
    blocks = assemble(batches, len(x), rows_per_block=300)
    assert list(blocks.offsets) == [0, 300, 600, 900, 1000] and blocks.dim == 8
    np.testing.assert_array_equal(blocks.to_matrix(), x)

    rows = np.sort(rng.choice(len(x), 400, replace=False))
    np.testing.assert_array_equal(blocks.take(rows).to_matrix(), x[rows])
    assert blocks.take(np.arange(600)).refs == blocks.refs[:2]  # whole blocks are shared, not copied
    picks = rng.permutation(len(x))[:50]
    np.testing.assert_array_equal(blocks.gather(picks), x[picks])
    groups = rng.integers(0, 4, len(x))
    np.testing.assert_allclose(
        blocks.group_sums(groups, 4), [x[groups == g].astype(np.float64).sum(0) for g in range(4)]
    )
    np.testing.assert_allclose(blocks.dots(rows, x[3]), x[rows].astype(np.float64) @ x[3].astype(np.float64))
    assert EmbeddingBlocks.of(blocks) is blocks and EmbeddingBlocks.of(x).n == 1000


def test_a_hole_a_repeat_or_two_widths_are_refused(ray_session):
    one = lambda k, dim=3: ray.put({"key": np.array([k]), "embedding": np.ones((1, dim), np.float32)})
    with pytest.raises(RuntimeError, match="1 keys missing"):
        assemble([one(0)], 2)
    with pytest.raises(RuntimeError, match="1 repeated"):
        assemble([one(0), one(0), one(1)], 2)
    with pytest.raises(DimensionMismatch, match=r"\[3, 4\]"):
        assemble([one(0), one(1, dim=4)], 2)
    with pytest.raises(DimensionMismatch):
        assemble([one(0), one(1, dim=4)], 2, rows_per_block=1)  # split across blocks too
