"""Greedy resolution of near-duplicate pairs in priority order.

Rule (the Platypus notebook's one-vs-kept loop, made order-explicit): walk the rows from
highest to lowest priority; a row is removed iff its cosine to some already-kept row is
>= threshold. Given every pair above the threshold, this needs one pass over a sparse
graph instead of N comparisons against a growing kept set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from platypus_ray.refine.similarity import Pairs


@dataclass
class DedupDecision:
    """Per row: kept or not; for removed rows, the kept row it duplicates and the cosine."""

    keep: np.ndarray  # bool
    matched: np.ndarray  # int64 row index of the kept duplicate, -1 if kept
    score: np.ndarray  # float64 cosine to ``matched``, nan if kept


def priority_order(output_len: np.ndarray, keep: str) -> np.ndarray:
    """Row indices from highest to lowest priority; rows are given in input order.

    ``first``: input order. ``longest_output``: longer output first, ties by input order.
    """
    if keep == "first":
        return np.arange(len(output_len))
    return np.lexsort((np.arange(len(output_len)), -np.asarray(output_len)))


def resolve_greedy(n: int, pairs: Pairs, order: np.ndarray) -> DedupDecision:
    """Apply the greedy rule to ``pairs`` with rows visited in ``order``."""
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    # Orient every edge from the higher-priority row (hi) to the lower-priority one (lo).
    i_first = rank[pairs.i] < rank[pairs.j]
    hi = np.where(i_first, pairs.i, pairs.j)
    lo = np.where(i_first, pairs.j, pairs.i)
    by_lo = np.argsort(lo, kind="stable")
    hi, lo, score = hi[by_lo], lo[by_lo], pairs.score[by_lo]
    bounds = np.searchsorted(lo, np.arange(n + 1))

    keep = np.ones(n, dtype=bool)
    matched = np.full(n, -1, dtype=np.int64)
    best = np.full(n, np.nan)
    # Only rows with a higher-priority neighbour can be removed; visit them by rank.
    candidates = np.unique(lo)
    for row in candidates[np.argsort(rank[candidates])]:
        lo_slice = slice(bounds[row], bounds[row + 1])
        kept_neighbours = keep[hi[lo_slice]]
        if kept_neighbours.any():
            keep[row] = False
            scores = np.where(kept_neighbours, score[lo_slice], -np.inf)
            pick = int(np.argmax(scores))
            matched[row] = hi[lo_slice][pick]
            best[row] = scores[pick]
    return DedupDecision(keep, matched, best)
