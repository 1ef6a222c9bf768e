"""The greedy rule decided in rounds of Ray tasks: the sequential walk's decision, row for row."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.devtools.dedup_reference import greedy_reference
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.greedy import exact_check_against, resolve_greedy
from platypus_ray.refine.dedup.kept_check import KeptCheck
from platypus_ray.refine.dedup.rounds import resolve_in_rounds
from platypus_ray.refine.dedup.similarity import all_pairs_above
from tests.refine.dedup.test_kept_walk import families


def chain(length: int, threshold: float) -> np.ndarray:
    """Windows of ``w`` ones sliding one place a row: consecutive rows at cosine (w-1)/w >= threshold,
    rows two apart at (w-2)/w below it. In file order the rule keeps every other row, a link a round."""
    w = int(np.floor(1 / (1 - threshold) + 1e-9)) + 1
    emb = np.zeros((length, length + w))
    for k in range(length):
        emb[k, k : k + w] = 1 / np.sqrt(w)
    return emb.astype(np.float32)


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rows of ``a`` and ``b`` in orthogonal coordinates (no pair across them)."""
    out = np.zeros((len(a) + len(b), a.shape[1] + b.shape[1]), dtype=np.float32)
    out[: len(a), : a.shape[1]], out[len(a) :, a.shape[1] :] = a, b
    return out


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n_families=st.integers(1, 15),
    copies=st.integers(1, 25),
    spread=st.sampled_from([0.05, 0.2, 0.35, 0.6]),
    chain_length=st.sampled_from([0, 3, 40, 150]),
    threshold=st.sampled_from([0.7, 0.8, 0.9]),
    parts=st.sampled_from([1, 2, 7]),
    tail_share=st.sampled_from([0.0, 0.01, 0.5]),
    per_row=st.sampled_from([None, 1, 3]),
    order_kind=st.sampled_from(["file", "random", "reversed"]),
)
def test_rounds_decide_as_the_sequential_walk_and_brute_force(
    ray_session, seed, n_families, copies, spread, chain_length, threshold, parts, tail_share, per_row, order_kind
):
    emb = families(seed, n_families, copies, spread, dim=8)
    if chain_length:
        emb = side_by_side(chain(chain_length, threshold), emb)
    n = len(emb)
    order = {
        "file": np.arange(n),
        "random": np.random.default_rng(seed).permutation(n),
        "reversed": np.arange(n)[::-1].copy(),
    }[order_kind]
    rank = np.argsort(order)
    pairs = all_pairs_above(emb, threshold, 64, rank=rank if per_row else None, per_row=per_row)
    check = KeptCheck(EmbeddingBlocks.of(emb), threshold, 60)
    decision, log = resolve_in_rounds(n, pairs, order, 60, check, parts=parts, tail_share=tail_share)
    reference = resolve_greedy(n, pairs, order, exact_check_against(emb, threshold))
    np.testing.assert_array_equal(decision.keep, greedy_reference(emb, order, threshold))
    np.testing.assert_array_equal(decision.matched, reference.matched)
    np.testing.assert_allclose(decision.score, reference.score, rtol=0, atol=1e-12)
    assert sum(log["decided_per_round"]) + log["tail_rows"] == n and log["rounds"] >= 1
    assert sum(log["tasks_per_node"].values()) == log["tasks"] >= log["parts"]


def test_a_long_chain_runs_many_rounds_then_one_tail_task(ray_session):
    emb = chain(300, 0.8)
    order = np.arange(len(emb))
    pairs = all_pairs_above(emb, 0.8, 64)
    assert len(pairs.i) == 299  # neighbours only: a path
    decision, log = resolve_in_rounds(len(emb), pairs, order, 60, parts=3, tail_share=0.0)
    np.testing.assert_array_equal(decision.keep, np.arange(300) % 2 == 0)
    assert log["rounds"] == 64 and log["decided_per_round"][:3] == [1, 1, 1] and log["tail"] == "task"
    assert log["tail_rows"] == 300 - sum(log["decided_per_round"]) > 0
    shuffled = np.random.default_rng(0).permutation(len(emb))  # a random order: a few rounds, no long tail
    decision, log = resolve_in_rounds(len(emb), pairs, shuffled, 60, parts=3, tail_share=0.0)
    np.testing.assert_array_equal(decision.keep, greedy_reference(emb, shuffled, 0.8))
    assert log["rounds"] < 20 and log["tail_rows"] == 0


def test_a_template_filled_in_many_times_is_settled_by_a_few_batched_checks(ray_session):
    """1,500 near-copies of one row, each listing only its 4 best earlier neighbours: the kept first
    row is listed by few of them, so the others are removed by checks against the kept rows, in a
    handful of passes (one task a block each), not one check per row."""
    rng = np.random.default_rng(5)
    centre = rng.normal(size=32)
    emb = centre + 0.05 * rng.normal(size=(1500, 32))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    order = np.arange(len(emb))
    pairs = all_pairs_above(emb, 0.8, 256, rank=order, per_row=4)
    assert pairs.incomplete.sum() > 1000
    decision, log = resolve_in_rounds(len(emb), pairs, order, 60, KeptCheck(EmbeddingBlocks.of(emb), 0.8, 60))
    np.testing.assert_array_equal(decision.keep, greedy_reference(emb, order, 0.8))
    assert decision.keep.sum() == 1 and (decision.matched[1:] == 0).all()
    assert log["tail"] == "checked" and log["checks"]["passes"] <= 4
    assert log["checks"]["removed_by_check"] > 1000
