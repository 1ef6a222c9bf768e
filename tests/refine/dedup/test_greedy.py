"""Tiled, distributed semantic dedup must decide exactly as the brute-force one-vs-kept loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.devtools.dedup_reference import greedy_reference, platypus_notebook_loop
from platypus_ray.refine.dedup.greedy import priority_order, resolve_greedy
from platypus_ray.refine.dedup.similarity import Pairs, all_pairs_above, best_matches


def clustered_embeddings(n: int, dim: int = 32, clusters: int = 40, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Unit vectors in tight clusters: many pairs above 0.8, chains of them, and plenty below."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force_pairs(emb: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    sims = emb.astype(np.float64) @ emb.astype(np.float64).T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("tile", [16, 37, 100, 1000])
def test_all_pairs_equal_brute_force_for_tiles_not_dividing_n(ray_session, tile):
    emb = clustered_embeddings(301)
    pairs = all_pairs_above(emb, 0.8, tile)
    assert set(zip(pairs.i.tolist(), pairs.j.tolist())) == brute_force_pairs(emb, 0.8)
    assert len(pairs.i) > 150  # the fixture really has many duplicate pairs
    sims = emb.astype(np.float64) @ emb.astype(np.float64).T
    np.fill_diagonal(sims, -1)
    np.testing.assert_allclose(pairs.nearest, sims.max(axis=1), atol=1e-5)
    np.testing.assert_allclose(pairs.score, sims[pairs.i, pairs.j], atol=1e-12)


@pytest.mark.parametrize("keep", ["first", "longest_output"])
@pytest.mark.parametrize("tile", [23, 128])
def test_greedy_decisions_identical_to_reference(ray_session, keep, tile):
    emb = clustered_embeddings(517, seed=1)
    output_len = np.random.default_rng(2).integers(1, 40, len(emb))  # many ties: input order breaks them
    order = priority_order(output_len, keep)
    decision = resolve_greedy(len(emb), all_pairs_above(emb, 0.8, tile), order)
    expected = greedy_reference(emb, order, 0.8)
    assert 50 < expected.sum() < len(emb) - 50  # both kept and removed rows in numbers
    np.testing.assert_array_equal(decision.keep, expected)
    # Every removed row points at a kept row of higher priority at >= threshold.
    rank = np.argsort(order)
    removed = np.flatnonzero(~decision.keep)
    assert decision.keep[decision.matched[removed]].all()
    assert (rank[decision.matched[removed]] < rank[removed]).all()
    assert (decision.score[removed] >= 0.8).all()


def test_keep_first_reproduces_the_platypus_notebook_loop(ray_session):
    emb = clustered_embeddings(400, seed=3)
    decision = resolve_greedy(len(emb), all_pairs_above(emb, 0.8, 64), priority_order(np.zeros(len(emb)), "first"))
    np.testing.assert_array_equal(decision.keep, platypus_notebook_loop(emb, 0.8))


def test_priority_order_longest_output_ties_by_input_order():
    assert priority_order(np.array([3, 5, 5, 1]), "longest_output").tolist() == [1, 2, 0, 3]
    assert priority_order(np.array([3, 5, 5, 1]), "first").tolist() == [0, 1, 2, 3]


def test_chain_keeps_the_far_end():
    # a ~ b, b ~ c, a !~ c: greedy in order a, b, c keeps a and c (b is removed by a, c has no kept match).
    pairs = Pairs(np.array([0, 1]), np.array([1, 2]), np.array([0.9, 0.85]), np.zeros(3))
    decision = resolve_greedy(3, pairs, np.arange(3))
    assert decision.keep.tolist() == [True, False, True]
    assert decision.matched.tolist() == [-1, 0, -1]


def test_best_matches_equals_argmax(ray_session):
    queries = clustered_embeddings(150, seed=4)
    references = clustered_embeddings(61, seed=5)
    best = best_matches(queries, references, 0.8, tile=32)
    sims = queries.astype(np.float64) @ references.astype(np.float64).T
    np.testing.assert_allclose(best.score, sims.max(axis=1), atol=1e-12)
    np.testing.assert_array_equal(sims[np.arange(len(queries)), best.index], sims.max(axis=1))


@pytest.mark.parametrize("per_row, local_bytes", [(1, 0), (3, 2**28)])
def test_bounded_neighbour_lists_decide_exactly_as_brute_force(ray_session, monkeypatch, per_row, local_bytes):
    """Keeping only each row's best higher-priority neighbours, with the exact check for rows
    over the bound, changes no decision, whatever the bound; the check reads the blocks by
    tasks (local_bytes 0) or a driver copy of a small input, with the same result."""
    from platypus_ray.refine.dedup import greedy as semantic_dedup
    from platypus_ray.refine.dedup.greedy import exact_check_against

    monkeypatch.setattr(semantic_dedup, "_LOCAL_CHECK_BYTES", local_bytes)

    emb = clustered_embeddings(517, seed=1)
    output_len = np.random.default_rng(2).integers(1, 40, len(emb))
    order = priority_order(output_len, "longest_output")
    rank = np.argsort(order)
    pairs = all_pairs_above(emb, 0.8, 64, rank=rank, per_row=per_row)
    assert pairs.incomplete.sum() > 10 and pairs.count > len(pairs.i)  # the bound really cut lists
    checked = []
    check = exact_check_against(emb, 0.8)
    decision = resolve_greedy(len(emb), pairs, order, lambda *a: checked.append(a[0]) or check(*a))
    assert checked  # some rows needed the exact check
    full = resolve_greedy(len(emb), all_pairs_above(emb, 0.8, 64), order)
    np.testing.assert_array_equal(decision.keep, greedy_reference(emb, order, 0.8))
    np.testing.assert_array_equal(decision.matched, full.matched)
    np.testing.assert_allclose(decision.score, full.score, atol=1e-12)


def test_a_template_filled_in_thousands_of_times_stays_within_the_row_bound(ray_session):
    """3,000 rows all within 0.8 of each other (4.5 million pairs): the search keeps at most
    per_row neighbours a row, and the one kept row is the highest-priority one."""
    from platypus_ray.refine.dedup.greedy import exact_check_against

    rng = np.random.default_rng(5)
    template = rng.normal(size=64)
    emb = template + 0.05 * rng.normal(size=(3000, 64))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    order = priority_order(rng.integers(1, 500, len(emb)), "longest_output")
    rank = np.argsort(order)
    pairs = all_pairs_above(emb, 0.8, 512, rank=rank, per_row=8)
    assert pairs.count == 3000 * 2999 // 2  # every pair is a near-duplicate
    assert len(pairs.i) <= 3000 * 8  # ... but at most 8 are held per row
    decision = resolve_greedy(len(emb), pairs, order, exact_check_against(emb, 0.8))
    assert np.flatnonzero(decision.keep).tolist() == [order[0]]


@pytest.mark.parametrize("share", [0.0, 0.3, 0.99, 1.0, 10.0])
def test_a_pair_budget_holds_every_pair_when_they_fit_and_decides_exactly_when_they_do_not(ray_session, share):
    """dedup.max_pairs: a search whose pairs fit the budget holds every one of them (no row marked
    incomplete, the pairs equal brute force); past it, wherever in the run the budget is crossed,
    rows keep their best neighbours and the decisions still equal brute force."""
    from platypus_ray.refine.dedup.greedy import exact_check_against

    emb = clustered_embeddings(517, seed=3)
    truth = brute_force_pairs(emb, 0.8)
    order = priority_order(np.random.default_rng(4).integers(1, 40, len(emb)), "longest_output")
    rank = np.argsort(order)
    budget = int(share * len(truth))
    pairs = all_pairs_above(emb, 0.8, 64, rank=rank, per_row=2, max_pairs=budget)
    assert pairs.count == len(truth)
    if budget >= len(truth):
        assert set(zip(pairs.i.tolist(), pairs.j.tolist())) == truth and not pairs.incomplete.any()
    else:
        assert len(pairs.i) < len(truth) and pairs.incomplete.any()
    decision = resolve_greedy(len(emb), pairs, order, exact_check_against(emb, 0.8))
    np.testing.assert_array_equal(decision.keep, greedy_reference(emb, order, 0.8))


@pytest.mark.parametrize("n", [0, 1])
def test_bounded_search_of_fewer_than_two_rows_finds_nothing(n):
    pairs = all_pairs_above(np.ones((n, 4), dtype=np.float32) / 2, 0.8, 16, rank=np.arange(n), per_row=4)
    assert len(pairs.i) == 0 and pairs.count == 0 and not pairs.incomplete.any() and len(pairs.incomplete) == n


def _walk_row_by_row(n, pairs, order, exact_check=None):
    """The greedy rule as a plain walk in priority order over listed pairs (the oracle for
    resolve_greedy's propagation): removed iff a listed higher-priority neighbour is kept; an
    incomplete row with none asks ``exact_check``; the match is the best kept neighbour."""
    rank = np.argsort(order)
    keep = np.ones(n, dtype=bool)
    matched, score = np.full(n, -1), np.full(n, np.nan)
    neighbours: dict[int, list] = {}
    for a, b, s in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.score.tolist()):
        hi, lo = (a, b) if rank[a] < rank[b] else (b, a)
        neighbours.setdefault(lo, []).append((hi, s))
    incomplete = pairs.incomplete if pairs.incomplete is not None else np.zeros(n, dtype=bool)
    for row in order.tolist():
        kept = [(s, -k, hi) for k, (hi, s) in enumerate(neighbours.get(row, [])) if keep[hi]]
        if kept:
            s, _, hi = max(kept)
            keep[row], matched[row], score[row] = False, hi, s
        elif incomplete[row]:
            match, cosine = exact_check(row, keep, rank)
            if match >= 0:
                keep[row], matched[row], score[row] = False, match, cosine
    return keep, matched, score


@given(n=st.integers(2, 120), density=st.floats(0.0, 0.3), chain=st.booleans(), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_propagation_decides_as_the_row_by_row_walk_on_any_graph(n, density, chain, seed):
    """Random graphs, priority orders, tied scores, incomplete rows and chains longer than the
    propagation's rounds: the same keep, matches and scores as a walk one row at a time."""
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(n, k=1)
    pick = rng.random(len(i)) < density
    i, j = i[pick], j[pick]
    if chain:  # 0-1, 1-2, ...: each link settles one propagation round later
        i, j = np.r_[i, np.arange(n - 1)], np.r_[j, np.arange(1, n)]
        _, first = np.unique(i * n + j, return_index=True)
        i, j = i[first], j[first]
    score = rng.choice([0.81, 0.85, 0.9, 0.97], size=len(i))  # few values: ties decide by list order
    order = rng.permutation(n) if not chain else np.arange(n)
    incomplete = rng.random(n) < 0.2
    pairs = Pairs(i, j, score, np.full(n, -1.0), incomplete=incomplete)

    def check(row, keep, rank_):  # a deterministic stand-in answer: the first kept row before it, for even rows
        before = np.flatnonzero(keep & (rank_ < rank_[row]))
        return (int(before[np.argmin(rank_[before])]), 0.8) if row % 2 == 0 and len(before) else (-1, float("nan"))

    decision = resolve_greedy(n, pairs, order, check)
    keep, matched, best = _walk_row_by_row(n, pairs, order, check)
    np.testing.assert_array_equal(decision.keep, keep)
    np.testing.assert_array_equal(decision.matched, matched)
    np.testing.assert_array_equal(decision.score, best)
