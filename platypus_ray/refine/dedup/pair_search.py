"""Which pair search semantic dedup runs (exact or clustered), and the greedy decision over its pairs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from platypus_ray.refine.dedup.clustered import ClusterSettings, clustered_pairs_above
from platypus_ray.refine.dedup.cost import exact_seconds, gemm_gflops_per_cpu
from platypus_ray.refine.config import DedupConfig
from platypus_ray.refine.dedup.recall import measure_recall
from platypus_ray.refine.dedup.greedy import DedupDecision, exact_check_against, priority_order, resolve_greedy
from platypus_ray.refine.dedup.similarity import Pairs, all_pairs_above
from platypus_ray.embedding import EmbeddingBlocks


@dataclass
class DedupOutcome:
    pairs: Pairs
    decision: DedupDecision
    stats: dict = field(default_factory=dict)  # mode, why, and for clustered: clusters, recall


def choose_mode(rows: int, dim: int, cfg: DedupConfig, cpus: float, gflops_per_cpu: float | None = None) -> tuple[str, str, dict]:
    """(mode, why, the estimate): ``auto`` is exact while the all-pairs GEMM is estimated to fit
    ``dedup.auto_exact_budget_s`` on ``cpus`` at the measured rate (:mod:`.cost`), clustered above."""
    if cfg.mode != "auto":
        return cfg.mode, f"dedup.mode: {cfg.mode}", {}
    rate = gflops_per_cpu if gflops_per_cpu is not None else gemm_gflops_per_cpu(dim)
    estimate = exact_seconds(rows, dim, cpus, rate)
    record = {"auto_exact_estimate_s": round(estimate, 2), "gemm_gflops_per_cpu": round(rate, 2), "cpus": cpus}
    sizing = f"{rows} rows x {dim} dims, {rate:.1f} GFLOP/s measured per CPU x {cpus:g} CPUs"
    if estimate <= cfg.auto_exact_budget_s:
        return "exact", (f"all pairs estimated at {estimate:.1f} s ({sizing}) <= dedup.auto_exact_budget_s "
                         f"({cfg.auto_exact_budget_s:g} s)"), record
    return "clustered", (f"all pairs estimated at {estimate:.1f} s ({sizing}) > dedup.auto_exact_budget_s "
                         f"({cfg.auto_exact_budget_s:g} s)"), record


def dedup_rows(vectors: EmbeddingBlocks | np.ndarray, output_len: np.ndarray, cfg: DedupConfig, num_gpus: float) -> DedupOutcome:
    """Find the near-duplicate pairs among the rows of ``vectors`` and apply the greedy rule in priority order."""
    blocks = EmbeddingBlocks.of(vectors)
    n = blocks.n
    mode, why, estimate = choose_mode(n, blocks.dim, cfg, _cluster_cpus())
    print(f"refine: semantic dedup of {n} rows: {mode} ({why})", flush=True)
    order = priority_order(output_len, cfg.keep)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    if mode == "exact" or n < 2:
        pairs = all_pairs_above(blocks, cfg.threshold, cfg.tile_size, num_gpus, cfg.timeout_s, rank, cfg.neighbours_per_row)
        decision = resolve_greedy(n, pairs, order, exact_check_against(blocks, cfg.threshold, cfg.timeout_s))
        return DedupOutcome(pairs, decision, {"mode": mode, "why": why, **estimate, **_bound_stats(pairs)})
    settings = ClusterSettings(rows_per_cluster=cfg.rows_per_cluster, margin=cfg.cluster_margin, tile=cfg.tile_size,
                               per_row=cfg.neighbours_per_row)
    found = clustered_pairs_above(blocks, cfg.threshold, settings, cfg.timeout_s, rank)
    check = exact_check_against(blocks, cfg.threshold, cfg.timeout_s)
    pairs, decision, closure = close_over_kept(blocks, found.pairs, order, rank, check, cfg, num_gpus)
    recall = measure_recall(blocks, found.pairs, decision.keep, rank, cfg.threshold, cfg.recall_sample, 0, cfg.timeout_s)
    print(f"refine: clustered dedup: {found.clusters} clusters, {found.assignments_per_row:.2f} per row; on "
          f"{recall.exact_sample_rows} sampled rows pair recall {recall.pair_recall:.4f}, decision agreement "
          f"{recall.decision_agreement:.4f} against an exact search", flush=True)
    stats = {"mode": mode, "why": why, **estimate, "clusters": found.clusters, "assignments_per_row": round(found.assignments_per_row, 3),
             "largest_cluster": found.largest_cluster, **_bound_stats(found.pairs), **recall.as_dict(), **closure}
    return DedupOutcome(pairs, decision, stats)


def close_over_kept(blocks: EmbeddingBlocks, pairs: Pairs, order: np.ndarray, rank: np.ndarray, check, cfg: DedupConfig,
                    num_gpus: float) -> tuple[Pairs, DedupDecision, dict]:
    """Make the kept set of a search that may miss pairs (clustered) equal the exact greedy result.

    The exact result is the one set K that (a) holds no pair >= threshold and (b) has, for every
    row outside it, a higher-priority row in K at or above the threshold (by induction over
    priority order). The greedy walk over found pairs gives (b) with true pairs; (a) is checked by
    an exact all-pairs search among the kept rows only (few where duplicates are dense): pairs it
    finds join the graph and the walk runs again, until the kept rows hold none. A cluster border
    that split a near-duplicate family then costs a round, not a wrongly kept row."""
    check = _remembered(check)
    decision = resolve_greedy(blocks.n, pairs, order, check)
    rounds, added = 0, 0
    while rounds < _MAX_CLOSURE_ROUNDS:
        kept = np.flatnonzero(decision.keep)
        among = all_pairs_above(blocks.take(kept, cfg.timeout_s), cfg.threshold, cfg.tile_size, num_gpus, cfg.timeout_s)
        rounds += 1
        if len(among.i) == 0:
            return pairs, decision, {"kept_check_rounds": rounds, "kept_check_pairs_added": added}
        added += len(among.i)
        pairs = _union(pairs, kept[among.i], kept[among.j], among.score)
        decision = resolve_greedy(blocks.n, pairs, order, check)
    raise RuntimeError(f"semantic dedup: the kept set still held pairs >= threshold after {rounds} exact checks")


def _remembered(check):
    """``check`` answered once per row across the closure's walks: a row removed by a kept match stays
    removed while that match is kept; a row the check kept stays kept (were that wrong, the search
    among kept rows finds the pair and the next walk removes it). Each exact check of a large input
    is a Ray task round trip: repeating them every round cost more than the search (321k rows)."""
    answers: dict[int, tuple[int, float]] = {}

    def again(row: int, keep: np.ndarray, rank: np.ndarray) -> tuple[int, float]:
        known = answers.get(row)
        if known is None or (known[0] >= 0 and not keep[known[0]]):
            known = answers[row] = check(row, keep, rank)
        return known

    return again


_MAX_CLOSURE_ROUNDS = 64  # each round removes at least one kept row; measured: 1-3 on perturbed Alpaca


def _union(pairs: Pairs, i: np.ndarray, j: np.ndarray, score: np.ndarray) -> Pairs:
    """``pairs`` plus new pairs (i < j) among kept rows, each pair once."""
    n = len(pairs.nearest)
    all_i, all_j = np.concatenate([pairs.i, i]), np.concatenate([pairs.j, j])
    _, first = np.unique(all_i.astype(np.int64) * n + all_j, return_index=True)
    first.sort()
    nearest = pairs.nearest.copy()
    np.maximum.at(nearest, i, score)
    np.maximum.at(nearest, j, score)
    total = None if pairs.total is None else pairs.total + len(i)
    return Pairs(all_i[first], all_j[first], np.concatenate([pairs.score, score])[first], nearest, pairs.incomplete, total)


def _cluster_cpus() -> float:
    """CPUs the tile tasks spread over: the Ray cluster's, or this machine's without Ray."""
    import os

    import ray

    return float(ray.cluster_resources().get("CPU", 1.0)) if ray.is_initialized() else float(os.cpu_count() or 1)


def _bound_stats(pairs: Pairs) -> dict:
    """How many pairs the search saw, and how many rows had more than ``neighbours_per_row``."""
    return {"pairs_found": pairs.count, "rows_over_neighbour_bound": int(pairs.incomplete.sum())}
