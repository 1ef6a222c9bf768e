"""The walk against the kept set (dedup.mode kept, auto's first choice) against the brute-force rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.devtools.dedup_reference import greedy_reference
from platypus_ray.refine.config import DedupConfig
from platypus_ray.refine.dedup import dedup_rows
from platypus_ray.refine.dedup.cost import choose_precision
from platypus_ray.refine.dedup.greedy import priority_order
from platypus_ray.refine.dedup.kept_walk import OverBudget, walk_against_kept
from platypus_ray.refine.dedup.similarity import bf16_margin
from tests.helpers import dense_family_vectors


def families(seed: int, n_families: int, copies: int, spread: float, dim: int = 24) -> np.ndarray:
    """Unit vectors in near-duplicate families: each a centre plus noise of size ``spread``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_families, dim))
    emb = np.repeat(centres, copies, axis=0) + spread * rng.normal(size=(n_families * copies, dim))
    emb = emb[rng.permutation(len(emb))]
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n_families=st.integers(1, 30),
    copies=st.integers(1, 40),
    spread=st.sampled_from([0.05, 0.2, 0.35, 0.6]),
    chunk=st.sampled_from([1, 3, 16, 97, 2048]),
    tile=st.sampled_from([1, 5, 64, 16384]),
    threshold=st.sampled_from([0.7, 0.8, 0.9]),
    shuffled=st.booleans(),
)
def test_the_walk_keeps_exactly_the_brute_force_set(seed, n_families, copies, spread, chunk, tile, threshold, shuffled):
    """Any chunking of the rows and tiling of the kept set: the brute-force kept set, and each
    removed row names an earlier kept row at or above the threshold with its float64 cosine."""
    emb = families(seed, n_families, copies, spread)
    order = np.random.default_rng(seed).permutation(len(emb)) if shuffled else np.arange(len(emb))
    decision, nearest, products = walk_against_kept(emb, order, threshold, chunk_rows=chunk, kept_tile=tile)
    np.testing.assert_array_equal(decision.keep, greedy_reference(emb, order, threshold))
    rank = np.argsort(order)
    gone = np.flatnonzero(~decision.keep)
    match = decision.matched[gone]
    assert decision.keep[match].all() and (rank[match] < rank[gone]).all()
    cosine = np.einsum("ij,ij->i", emb[gone].astype(np.float64), emb[match].astype(np.float64))
    np.testing.assert_allclose(decision.score[gone], cosine, atol=1e-6)
    assert (cosine >= threshold).all() and (decision.matched[decision.keep] == -1).all()
    assert (nearest[decision.keep] < threshold).all() and products <= len(emb) * (len(emb) - 1) // 2


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n_families=st.integers(1, 30),
    copies=st.integers(1, 40),
    spread=st.sampled_from([0.05, 0.2, 0.35, 0.6]),
    chunk=st.sampled_from([1, 16, 97, 2048]),
    tile=st.sampled_from([1, 64, 16384]),
    threshold=st.sampled_from([0.7, 0.8, 0.9]),
)
def test_bfloat16_products_decide_and_match_as_float32_does(seed, n_families, copies, spread, chunk, tile, threshold):
    """The bfloat16 walk: the same kept set and the same match for every removed row as the float32
    walk, and each match's score its float64 cosine."""
    emb = families(seed, n_families, copies, spread, dim=64)
    order = np.random.default_rng(seed).permutation(len(emb))
    float32, _, products32 = walk_against_kept(emb, order, threshold, chunk_rows=chunk, kept_tile=tile)
    counters: dict = {}
    bf16, _, products = walk_against_kept(
        emb, order, threshold, chunk_rows=chunk, kept_tile=tile, precision="bfloat16", counters=counters
    )
    np.testing.assert_array_equal(bf16.keep, greedy_reference(emb, order, threshold))
    np.testing.assert_array_equal(bf16.matched, float32.matched)
    gone = np.flatnonzero(~bf16.keep)
    cosine = np.einsum("ij,ij->i", emb[gone].astype(np.float64), emb[bf16.matched[gone]].astype(np.float64))
    np.testing.assert_allclose(bf16.score[gone], cosine, rtol=0, atol=1e-12)
    assert products == products32 and counters["rescored_pairs"] >= 0


@pytest.mark.parametrize("dim", [64, 256, 384])
def test_bfloat16_products_stay_within_the_margin_the_walk_rescores(dim):
    """The bound the bfloat16 walk relies on, against float64 on vectors whose cosines spread over
    [-1, 1] (near-duplicates among them): no product is off by more than bf16_margin(dim)."""
    import torch

    rng = np.random.default_rng(dim)
    base = rng.normal(size=(300, dim)) * rng.uniform(0.01, 3.0, size=dim)  # uneven coordinates, as embeddings have
    emb = np.concatenate([base, base + 0.3 * rng.normal(size=base.shape), -base])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    as_bf16 = torch.from_numpy(emb).to(torch.bfloat16)
    approx = (as_bf16 @ as_bf16.T).float().numpy().astype(np.float64)
    exact = emb.astype(np.float64) @ emb.T.astype(np.float64)
    error = np.abs(approx - exact).max()
    assert 1e-4 < error <= bf16_margin(dim)  # bfloat16 is coarse (the re-scoring matters), and bounded


def test_pairs_at_the_threshold_are_decided_in_float64_as_the_reference_decides_them():
    """200 pairs built at cosine 0.8 exactly: float32 products land on both sides of the threshold
    (about half of them here), float64 decides as the reference does."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 64))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    noise = rng.normal(size=(200, 64))
    noise -= (noise * a).sum(axis=1, keepdims=True) * a
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    emb = np.concatenate([a, 0.8 * a + 0.6 * noise]).astype(np.float32)
    order = np.ravel(
        np.column_stack([np.arange(200), np.arange(200, 400)])
    )  # a_0, b_0, a_1, b_1, ...: each a_i is kept first
    float32 = np.einsum("ij,ij->i", emb[:200], emb[200:])
    float64 = np.einsum("ij,ij->i", emb[:200].astype(np.float64), emb[200:].astype(np.float64))
    assert ((float32 >= 0.8) != (float64 >= 0.8)).any()  # the case exists in these vectors
    for precision in ("float32", "bfloat16"):
        decision, _, _ = walk_against_kept(emb, order, 0.8, chunk_rows=7, precision=precision)
        np.testing.assert_array_equal(decision.keep, greedy_reference(emb, order, 0.8))


def test_a_walk_past_its_budget_stops_early_saying_how_far_it_got():
    emb = families(0, 400, 2, 0.9)  # nearly all distinct: the kept set grows with the rows
    with pytest.raises(OverBudget) as over:
        walk_against_kept(emb, np.arange(len(emb)), 0.8, chunk_rows=64, max_products=5_000)
    assert 0 < over.value.rows_done < len(emb) and over.value.projected_products > 5_000


def test_the_products_precision_is_asked_or_measured_and_says_why():
    assert choose_precision("float32", 10**6, 256)[0] == "float32"
    assert choose_precision("bfloat16", 10, 256)[0] == "bfloat16"
    precision, record = choose_precision("auto", 1_000, 256)
    assert precision == "float32" and "fewer than" in record["why"]
    precision, record = choose_precision("auto", 10**6, 256)
    rates = record["gflops_per_cpu"]
    assert precision == ("bfloat16" if rates["bfloat16"] >= 1.3 * rates["float32"] else "float32")


@pytest.fixture(scope="module")
def perturbed_family(ray_session):
    """Static (model2vec) vectors of real text: 5 shipped instructions, each copied 120 times."""
    return dense_family_vectors(5, 120, seed=1, backend="static")


@pytest.mark.parametrize(
    "cfg",
    [
        DedupConfig(mode="auto", threshold=0.8, keep="longest_output"),
        DedupConfig(mode="kept", threshold=0.9, keep="first"),
        # a budget the walk cannot meet, but clustering would cost more: the walk runs on
        DedupConfig(mode="auto", threshold=0.8, keep="first", auto_exact_budget_s=0.0, rows_per_cluster=20),
    ],
    ids=["auto", "kept", "auto-over-budget"],
)
def test_refine_dedup_on_a_dense_family_of_real_text_keeps_the_brute_force_set(perturbed_family, cfg):
    emb = perturbed_family
    output_len = np.random.default_rng(3).integers(1, 60, len(emb))
    exact = greedy_reference(emb, priority_order(output_len, cfg.keep), cfg.threshold)
    outcome = dedup_rows(emb, output_len, cfg, 0)
    np.testing.assert_array_equal(outcome.decision.keep, exact)
    assert 1 < exact.sum() < len(emb) / 3  # a dense family: most rows go
    assert outcome.stats["mode"] == "kept"
    assert outcome.stats["pairs_found"] == (~exact).sum() and outcome.stats["dot_products"] > 0
    if cfg.auto_exact_budget_s == 0:  # the walk's work stayed under the clustered search's estimate
        assert outcome.stats["dot_products"] <= outcome.stats["clustered_estimate_products"]


def test_auto_clusters_when_the_walk_would_cost_more_than_the_sampled_partition(ray_session):
    """Many small families far apart (most rows kept, few copies crossing clusters): past the time
    budget the walk stops, clustered runs, and its kept set is the brute-force one too."""
    emb = families(7, 600, 2, 0.01, dim=24)
    cfg = DedupConfig(mode="auto", threshold=0.95, keep="first", auto_exact_budget_s=0.0, rows_per_cluster=16)
    outcome = dedup_rows(emb, np.ones(len(emb), dtype=np.int64), cfg, 0)
    np.testing.assert_array_equal(outcome.decision.keep, greedy_reference(emb, np.arange(len(emb)), 0.95))
    assert outcome.stats["mode"] == "clustered"
    assert "passed dedup.auto_exact_budget_s (0 s) and the clustered search's estimate" in outcome.stats["why"]
