"""Which search semantic dedup runs (the walk against the kept set, all pairs, or clustered) and the
greedy decision over what it found."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from platypus_ray.core.errors import InvariantError
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.config import DedupConfig
from platypus_ray.refine.dedup.certificate import certify
from platypus_ray.refine.dedup.clustered import ClusterSettings, clustered_pairs_above
from platypus_ray.refine.dedup.cost import exact_seconds, gemm_gflops_per_cpu
from platypus_ray.refine.dedup.greedy import DedupDecision, priority_order
from platypus_ray.refine.dedup.kept_check import KeptCheck
from platypus_ray.refine.dedup.kept_walk import OverBudget, kept_walk_pairs
from platypus_ray.refine.dedup.recall import measure_recall
from platypus_ray.refine.dedup.rounds import resolve_in_rounds
from platypus_ray.refine.dedup.similarity import Pairs, all_pairs_above, count_pairs_above

logger = logging.getLogger(__name__)


@dataclass
class DedupOutcome:
    pairs: Pairs
    decision: DedupDecision
    stats: dict = field(default_factory=dict)  # mode, why, and for clustered: clusters, recall


def choose_mode(
    rows: int,
    dim: int,
    cfg: DedupConfig,
    cpus: float,
    gflops_per_cpu: float | None = None,
    node_memory: float | None = None,
) -> tuple[str, str, dict]:
    """(mode, why, the estimate): ``auto`` walks against the kept set (exact) with a budget of
    ``dedup.auto_exact_budget_s`` at the measured GEMM rate on one node's ``cpus`` (:mod:`.cost`),
    as dot products (``max_products``: the walk gives up and clustered mode runs past it); it
    clusters from the start when the vectors would not fit a third of one node's ``node_memory``."""
    if cfg.mode != "auto":
        return cfg.mode, f"dedup.mode: {cfg.mode}", {}
    vector_bytes = rows * dim * 4
    if node_memory is not None and 3 * vector_bytes > node_memory:
        return (
            "clustered",
            (
                f"{rows} rows x {dim} dims ({vector_bytes / 2**30:.1f} GiB of vectors) do not fit a third of "
                f"one node's memory ({node_memory / 2**30:.1f} GiB) for the walk against the kept set"
            ),
            {},
        )
    rate = gflops_per_cpu if gflops_per_cpu is not None else gemm_gflops_per_cpu(dim)
    max_products = cfg.auto_exact_budget_s * rate * 1e9 * max(cpus, 1.0) / (2.0 * max(dim, 1))
    record = {
        "gemm_gflops_per_cpu": round(rate, 2),
        "cpus": cpus,
        "max_products": float(max_products),
        "all_pairs_estimate_s": round(exact_seconds(rows, dim, cpus, rate), 2),
    }
    return (
        "kept",
        (
            f"the walk against the kept set is exact; it runs while its projected work fits "
            f"dedup.auto_exact_budget_s ({cfg.auto_exact_budget_s:g} s at {rate:.1f} GFLOP/s measured per CPU x "
            f"{cpus:g} CPUs), clustered past it"
        ),
        record,
    )


def dedup_rows(
    vectors: EmbeddingBlocks | np.ndarray, output_len: np.ndarray | None, cfg: DedupConfig, num_gpus: float
) -> DedupOutcome:
    """Find the near-duplicate pairs among the rows of ``vectors``, apply the greedy rule in priority
    order, and check the result's certificate (:mod:`.certificate`: an error when it fails).
    ``output_len`` orders ``keep: longest_output``; ``first`` needs none."""
    blocks = EmbeddingBlocks.of(vectors)
    if cfg.keep == "first":  # input order is its own rank: one array, not two
        order = rank = np.arange(blocks.n)
    else:
        if output_len is None:
            raise InvariantError(f"dedup.keep: {cfg.keep} orders rows by output length, and none was given")
        order = priority_order(output_len, cfg.keep)
        rank = np.empty(blocks.n, dtype=np.int64)
        rank[order] = np.arange(blocks.n)
    outcome = _search_and_resolve(blocks, order, rank, cfg, num_gpus)
    certificate = certify(
        blocks,
        outcome.decision,
        None if cfg.keep == "first" else rank,
        cfg.threshold,
        _tiled_pair_count(cfg, num_gpus),
        cfg.timeout_s,
    )
    logger.info("refine: %s", certificate.line())
    outcome.stats["certificate"] = certificate.as_dict()
    return outcome


def _tiled_pair_count(cfg: DedupConfig, num_gpus: float):
    """The certificate's search among kept rows: an exact tiled count (pairs found, tasks)."""

    def count(kept: EmbeddingBlocks) -> tuple[int, int]:
        return count_pairs_above(kept, cfg.threshold, cfg.tile_size, num_gpus, cfg.timeout_s, cfg.products)

    return count


def _search_and_resolve(
    blocks: EmbeddingBlocks, order: np.ndarray, rank: np.ndarray, cfg: DedupConfig, num_gpus: float
) -> DedupOutcome:
    n = blocks.n
    cpus, memory = _node_capacity()
    mode, why, estimate = choose_mode(n, blocks.dim, cfg, cpus, node_memory=memory)
    settings = ClusterSettings(
        rows_per_cluster=cfg.rows_per_cluster,
        tile=cfg.tile_size,
        per_row=cfg.neighbours_per_row,
        max_pairs=cfg.max_pairs,
    )
    if mode == "kept" and n >= 2:
        max_products = estimate.pop("max_products", None)
        logger.info("refine: semantic dedup of %d rows: against the kept set (%s)", n, why)
        walked = kept_walk_pairs(
            blocks,
            None if cfg.keep == "first" else order,
            cfg.threshold,
            num_gpus,
            int(cpus),
            cfg.timeout_s,
            max_products,
            kept_shards(cfg.kept_shards),
            cfg.products,
            settings if cfg.mode == "auto" else None,
        )
        if not isinstance(walked, OverBudget):
            decision, pairs, products, walk_stats = walked
            return DedupOutcome(
                pairs,
                decision,
                {
                    "mode": "kept",
                    "why": why,
                    **estimate,
                    "dot_products": int(products),
                    "pairs_found": pairs.count,
                    "pairs": "each removed row with its kept match",
                    **walk_stats,
                },
            )
        mode, why = (
            "clustered",
            (
                f"the walk against the kept set had {walked.kept} rows kept after {walked.rows_done} of {n}; "
                f"its projected work ({walked.projected_products:.3g} dot products) passed "
                f"dedup.auto_exact_budget_s ({cfg.auto_exact_budget_s:g} s) and the clustered search's estimate "
                f"({walked.alternative or 0:.3g})"
            ),
        )
    logger.info("refine: semantic dedup of %d rows: %s (%s)", n, mode, why)
    estimate.pop("max_products", None)
    if mode == "exact" or n < 2:  # (kept with fewer than 2 rows: nothing to compare)
        pairs = all_pairs_above(
            blocks, cfg.threshold, cfg.tile_size, num_gpus, cfg.timeout_s, rank, cfg.neighbours_per_row, cfg.max_pairs
        )
        check = KeptCheck(blocks, cfg.threshold, cfg.timeout_s)
        decision, rounds = resolve_in_rounds(n, pairs, order, cfg.timeout_s, check)
        stats = {"mode": mode, "why": why, **estimate, **_bound_stats(pairs), "resolution": rounds}
        return DedupOutcome(pairs, decision, stats)
    found = clustered_pairs_above(blocks, cfg.threshold, settings, cfg.timeout_s, rank)
    check = KeptCheck(blocks, cfg.threshold, cfg.timeout_s)
    decision, rounds = resolve_in_rounds(n, found.pairs, order, cfg.timeout_s, check)
    recall = measure_recall(
        blocks, found.pairs, decision.keep, rank, cfg.threshold, cfg.recall_sample, 0, cfg.timeout_s
    )
    logger.info(
        "refine: clustered dedup: %d clusters, replication %.2f (largest cluster %d rows): the partition's work "
        "%.3g dot products against all pairs' %.3g, %s search ran; on %d sampled rows pair recall %.4f",
        found.clusters,
        found.replication,
        found.largest_cluster,
        found.partition_work,
        found.all_pairs_work,
        found.search,
        recall.exact_sample_rows,
        recall.pair_recall,
    )
    stats = {
        "mode": mode,
        "why": why,
        **estimate,
        "clusters": found.clusters,
        "assignments_per_row": round(found.assignments_per_row, 3),
        "replication": round(found.replication, 3),
        "largest_cluster": found.largest_cluster,
        "partition_work": found.partition_work,
        "all_pairs_work": found.all_pairs_work,
        "search": found.search,
        **_bound_stats(found.pairs),
        **recall.as_dict(),
        "resolution": rounds,
    }
    return DedupOutcome(found.pairs, decision, stats)


def _node_capacity() -> tuple[float, float | None]:
    """(CPUs, memory bytes) of the largest live node: the walk against the kept set is one task
    on one node. This machine's CPUs, memory unknown, without Ray."""
    import os

    import ray

    if not ray.is_initialized():
        return float(os.cpu_count() or 1), None
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cpus = max((r.get("CPU", 0.0) for r in nodes), default=0.0) or 1.0
    memory = max((r.get("memory", 0.0) for r in nodes), default=0.0) or None
    return float(cpus), memory


def kept_shards(configured: int | None) -> tuple[int, float]:
    """(shards, CPUs each) for the walk against the kept set: ``dedup.kept_shards``, or with None one
    a node when more than one node has CPUs (none on one node: a single task has no hand-over to
    pay). Each shard takes the smallest node's CPUs, or its share when more shards than nodes."""
    import ray

    if not ray.is_initialized():
        return 0, 0.0
    cpus = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    cpus = [c for c in cpus if c > 0]
    count = len(cpus) if configured is None and len(cpus) > 1 else configured or 0
    if count < 2 or not cpus:
        return 0, 0.0
    return count, min(min(cpus), sum(cpus) / count)


def _bound_stats(pairs: Pairs) -> dict:
    """How many pairs the search saw (clustered: once per cluster a pair shares), whether it held
    them all (within ``dedup.max_pairs``), and how many rows had more than ``neighbours_per_row``."""
    over = 0 if pairs.incomplete is None else int(pairs.incomplete.sum())  # None: an unbounded search, all held
    return {
        "pairs_found": pairs.count,
        "pairs_held": len(pairs.i),
        "every_pair_held": over == 0,
        "rows_over_neighbour_bound": over,
    }
