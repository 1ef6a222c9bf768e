"""The certificate checked on every dedup run: it holds on every mode's result and fails, loudly,
on a kept set that is not the greedy rule's."""

from __future__ import annotations

import numpy as np
import pytest

from platypus_ray.core.errors import InvariantError
from platypus_ray.devtools.dedup_reference import greedy_reference
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.config import DedupConfig
from platypus_ray.refine.dedup import certificate_line, dedup_rows
from platypus_ray.refine.dedup.certificate import certify
from platypus_ray.refine.dedup.greedy import DedupDecision
from platypus_ray.refine.dedup.similarity import count_pairs_above
from tests.refine.dedup.test_kept_walk import families
from tests.refine.dedup.test_partition import with_pairs_at


def _count_by_brute_force(threshold):
    def count(kept: EmbeddingBlocks) -> tuple[int, int]:
        x = kept.to_matrix().astype(np.float64)
        return int(np.triu(x @ x.T >= threshold, k=1).sum()), 1

    return count


@pytest.mark.parametrize("mode", ["kept", "exact", "clustered"])
def test_every_mode_reports_a_certificate_that_holds(ray_session, mode):
    emb = families(3, 12, 15, 0.2)
    outcome = dedup_rows(emb, np.ones(len(emb)), DedupConfig(mode=mode, keep="first", rows_per_cluster=16), 0)
    cert = outcome.stats["certificate"]
    assert cert["holds"] and cert["kept"] == outcome.decision.keep.sum() and cert["tasks"] >= 1
    assert cert["kept"] + cert["removed"] == len(emb) and cert["kept_pairs_at_or_above"] == 0
    assert certificate_line(cert).startswith("semantic dedup certificate holds: 0 pairs of the ")


def test_a_wrong_kept_set_fails_the_certificate(ray_session):
    emb = families(4, 6, 10, 0.2)
    blocks = EmbeddingBlocks.from_matrix(emb, rows_per_block=17)  # witnesses in other blocks
    n, order = len(emb), np.random.default_rng(0).permutation(len(emb))
    rank = np.argsort(order)
    keep = greedy_reference(emb, order, 0.8)
    emb64 = emb.astype(np.float64)
    sims = emb64 @ emb64.T
    matched = np.full(n, -1)
    for row in np.flatnonzero(~keep):
        earlier_kept = np.flatnonzero(keep & (rank < rank[row]))
        matched[row] = earlier_kept[np.argmax(sims[row, earlier_kept])]
    right = DedupDecision(keep, matched, np.full(n, np.nan))
    count = _count_by_brute_force(0.8)
    assert certify(blocks, right, rank, 0.8, count, 60).holds

    gone = np.flatnonzero(~keep)[0]
    extra = DedupDecision(keep.copy(), matched.copy(), right.score)  # (a): a removed row kept as well
    extra.keep[gone], extra.matched[gone] = True, -1
    with pytest.raises(InvariantError, match=r"certificate FAILS: [1-9]\d* pairs of the .* kept rows >= 0.8; 0 of"):
        certify(blocks, extra, rank, 0.8, count, 60)

    kept_row = np.flatnonzero(keep)[-1]
    dropped = DedupDecision(
        keep.copy(), matched.copy(), right.score
    )  # (b): a kept row removed, its "match" a far row (its own removed rows lose their witness too)
    dropped.keep[kept_row] = False
    dropped.matched[kept_row] = np.flatnonzero(keep)[np.argmin(sims[kept_row, keep])]
    with pytest.raises(
        InvariantError, match=r"0 pairs of the .* kept rows >= 0.8; [1-9]\d* of .* removed rows without"
    ):
        certify(blocks, dropped, rank, 0.8, count, 60)

    later = DedupDecision(keep.copy(), matched.copy(), right.score)  # (b): a witness of lower priority
    row = gone
    later_kept = np.flatnonzero(keep & (rank > rank[row]))
    if len(later_kept):
        later.matched[row] = later_kept[0]
        with pytest.raises(InvariantError, match=r"1 of .* removed rows without an earlier kept row"):
            certify(blocks, later, rank, 0.8, count, 60)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("tile", [7, 64])
def test_the_certificates_pair_count_is_the_float64_count(ray_session, precision, tile):
    """count_pairs_above against a float64 brute-force count, blocks and tiles not dividing the rows,
    with 30 pairs built at exactly the threshold (float32 and bfloat16 land on both sides of it)."""
    emb = with_pairs_at(families(11, 20, 6, 0.3, dim=32), 0.8, 30, 11)
    blocks = EmbeddingBlocks.from_matrix(emb, rows_per_block=50)
    expected, _ = _count_by_brute_force(0.8)(blocks)
    found, tasks = count_pairs_above(blocks, 0.8, tile, precision=precision)
    assert found == expected > 30 and tasks == sum(-(-(e - f) // tile) for _, f, e in blocks.spans())


def test_input_order_needs_no_rank_and_still_catches_a_later_witness(ray_session):
    """``keep: first`` passes no rank (input order is the priority): the same decision certifies,
    and a removed row whose witness comes after it in the input fails (b)."""
    emb = families(4, 6, 10, 0.2)
    blocks = EmbeddingBlocks.from_matrix(emb, rows_per_block=17)
    n = len(emb)
    keep = greedy_reference(emb, np.arange(n), 0.8)
    emb64 = emb.astype(np.float64)
    sims = emb64 @ emb64.T
    matched = np.full(n, -1)
    for row in np.flatnonzero(~keep):
        earlier_kept = np.flatnonzero(keep[:row])
        matched[row] = earlier_kept[np.argmax(sims[row, earlier_kept])]
    count = _count_by_brute_force(0.8)
    assert certify(blocks, DedupDecision(keep, matched, np.full(n, np.nan)), None, 0.8, count, 60).holds
    row = next(r for r in np.flatnonzero(~keep) if keep[r + 1 :].any())
    later = matched.copy()
    later[row] = row + 1 + np.flatnonzero(keep[row + 1 :])[0]  # a kept row after it
    with pytest.raises(InvariantError, match=r"1 of .* removed rows without an earlier kept row"):
        certify(blocks, DedupDecision(keep, later, np.full(n, np.nan)), None, 0.8, count, 60)
