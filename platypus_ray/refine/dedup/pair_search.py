"""Which pair search semantic dedup runs (exact or clustered), and the greedy decision over its pairs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from platypus_ray.refine.dedup.clustered import ClusterSettings, clustered_pairs_above
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


def choose_mode(rows: int, cfg: DedupConfig) -> tuple[str, str]:
    """(mode, why): ``auto`` is exact while all-pairs is cheap, clustered above."""
    if cfg.mode != "auto":
        return cfg.mode, f"dedup.mode: {cfg.mode}"
    if rows <= cfg.auto_exact_max_rows:
        return "exact", f"{rows} rows <= dedup.auto_exact_max_rows ({cfg.auto_exact_max_rows}): all pairs are cheap"
    return "clustered", f"{rows} rows > dedup.auto_exact_max_rows ({cfg.auto_exact_max_rows}): all pairs grow as rows^2"


def dedup_rows(vectors: EmbeddingBlocks | np.ndarray, output_len: np.ndarray, cfg: DedupConfig, num_gpus: float) -> DedupOutcome:
    """Find the near-duplicate pairs among the rows of ``vectors`` and apply the greedy rule in priority order."""
    blocks = EmbeddingBlocks.of(vectors)
    n = blocks.n
    mode, why = choose_mode(n, cfg)
    print(f"refine: semantic dedup of {n} rows: {mode} ({why})", flush=True)
    order = priority_order(output_len, cfg.keep)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    if mode == "exact" or n < 2:
        pairs = all_pairs_above(blocks, cfg.threshold, cfg.tile_size, num_gpus, cfg.timeout_s, rank, cfg.neighbours_per_row)
        decision = resolve_greedy(n, pairs, order, exact_check_against(blocks, cfg.threshold, cfg.timeout_s))
        return DedupOutcome(pairs, decision, {"mode": mode, "why": why, **_bound_stats(pairs)})
    settings = ClusterSettings(rows_per_cluster=cfg.rows_per_cluster, margin=cfg.cluster_margin, tile=cfg.tile_size,
                               per_row=cfg.neighbours_per_row)
    found = clustered_pairs_above(blocks, cfg.threshold, settings, cfg.timeout_s, rank)
    decision = resolve_greedy(n, found.pairs, order, exact_check_against(blocks, cfg.threshold, cfg.timeout_s))
    recall = measure_recall(blocks, found.pairs, decision.keep, rank, cfg.threshold, cfg.recall_sample, 0, cfg.timeout_s)
    print(f"refine: clustered dedup: {found.clusters} clusters, {found.assignments_per_row:.2f} per row; on "
          f"{recall.exact_sample_rows} sampled rows pair recall {recall.pair_recall:.4f}, decision agreement "
          f"{recall.decision_agreement:.4f} against an exact search", flush=True)
    stats = {"mode": mode, "why": why, "clusters": found.clusters, "assignments_per_row": round(found.assignments_per_row, 3),
             "largest_cluster": found.largest_cluster, **_bound_stats(found.pairs), **recall.as_dict()}
    return DedupOutcome(found.pairs, decision, stats)


def _bound_stats(pairs: Pairs) -> dict:
    """How many pairs the search saw, and how many rows had more than ``neighbours_per_row``."""
    return {"pairs_found": pairs.count, "rows_over_neighbour_bound": int(pairs.incomplete.sum())}
