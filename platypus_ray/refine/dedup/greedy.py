"""Greedy resolution of near-duplicate pairs in priority order.

Rule (the Platypus notebook's one-vs-kept loop, made order-explicit): walk the rows from
highest to lowest priority; a row is removed iff its cosine to some already-kept row is
>= threshold. Given every pair above the threshold, this needs one pass over a sparse
graph instead of N comparisons against a growing kept set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.similarity import Pairs


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


# (row, keep so far, rank) -> (kept row it duplicates or -1, cosine): an exact check against every kept row
_LOCAL_CHECK_BYTES = 256 * 2**20
ExactCheck = Callable[[int, np.ndarray, np.ndarray], tuple[int, float]]


def resolve_greedy(n: int, pairs: Pairs, order: np.ndarray, exact_check: ExactCheck | None = None) -> DedupDecision:
    """Apply the greedy rule to ``pairs`` with rows visited in ``order``.

    Pairs from a per-row-bounded search hold only each row's best higher-priority neighbours;
    a row marked ``incomplete`` none of whose listed neighbours is kept is settled by
    ``exact_check`` (its unlisted neighbours score lower, so the listed kept one, when there
    is one, is the best kept match anyway).

    A row's decision depends only on its higher-priority neighbours', so most rows are settled
    by propagation over the whole graph at once (a row with a kept neighbour is removed; one
    whose neighbours are all removed is kept), a few numpy passes where a row-by-row walk took
    20 us a row; what is left (long chains, rows needing the exact check) is walked in order."""
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    # Orient every edge from the higher-priority row (hi) to the lower-priority one (lo).
    i_first = rank[pairs.i] < rank[pairs.j]
    hi = np.where(i_first, pairs.i, pairs.j)
    lo = np.where(i_first, pairs.j, pairs.i)
    by_lo = np.argsort(lo, kind="stable")
    hi, lo, score = hi[by_lo], lo[by_lo], pairs.score[by_lo]
    bounds = np.searchsorted(lo, np.arange(n + 1))
    incomplete = pairs.incomplete if pairs.incomplete is not None else np.zeros(n, dtype=bool)
    if incomplete.any() and exact_check is None:
        raise ValueError("a per-row-bounded pair search needs an exact_check")

    state = _propagate(n, hi, lo, np.diff(bounds), incomplete)
    keep = state != _REMOVED
    matched = np.full(n, -1, dtype=np.int64)
    best = np.full(n, np.nan)
    undecided = np.flatnonzero(state == _UNDECIDED)
    for row in undecided[np.argsort(rank[undecided])]:  # in priority order: every earlier row is settled
        lo_slice = slice(bounds[row], bounds[row + 1])
        if keep[hi[lo_slice]].any():
            keep[row] = False
        elif incomplete[row] and exact_check is not None:  # never None here: checked before the walk
            match, cosine = exact_check(int(row), keep, rank)
            if match >= 0:
                keep[row], matched[row], best[row] = False, match, cosine
    # each removed row's match: its best-scoring kept neighbour (the first listed, on a tie)
    listed = ~keep[lo] & keep[hi]
    gone, first = _best_in_segments(lo[listed], score[listed])
    matched[gone], best[gone] = hi[listed][first], score[listed][first]
    return DedupDecision(keep, matched, best)


_UNDECIDED, _KEPT, _REMOVED = 0, 1, 2
_PROPAGATION_ROUNDS = 64  # each round settles one more link of the longest chain; measured 3-6 on Alpaca


def _propagate(n: int, hi: np.ndarray, lo: np.ndarray, degree: np.ndarray, incomplete: np.ndarray) -> np.ndarray:
    """Decisions that follow from the graph alone: a row with no higher-priority neighbour is kept
    (unless incomplete), a row with a kept one is removed, a complete row whose neighbours are all
    removed is kept; repeated until nothing changes. The rest stay undecided."""
    state = np.full(n, _UNDECIDED, dtype=np.int8)
    state[(degree == 0) & ~incomplete] = _KEPT
    for _ in range(_PROPAGATION_ROUNDS):
        open_pairs = state[lo] == _UNDECIDED
        p_hi, p_lo = hi[open_pairs], lo[open_pairs]
        if len(p_lo) == 0:
            break
        neighbour = state[p_hi]
        any_kept = np.bincount(p_lo[neighbour == _KEPT], minlength=n) > 0
        all_removed = np.bincount(p_lo[neighbour == _REMOVED], minlength=n) == degree
        undecided = state == _UNDECIDED
        removed, kept = undecided & any_kept, undecided & all_removed & ~incomplete & ~any_kept
        if not (removed.any() or kept.any()):
            break
        state[removed], state[kept] = _REMOVED, _KEPT
    return state


def _best_in_segments(key: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each distinct key, the position of its highest score: the first such, on a tie)."""
    order = np.lexsort((np.arange(len(key)), -score, key))
    keys, first = np.unique(key[order], return_index=True)
    return keys, order[first]


def exact_check_against(
    vectors: EmbeddingBlocks | np.ndarray, threshold: float, timeout_s: float = 3600.0
) -> ExactCheck:
    """An :data:`ExactCheck` over the float64 cosines of ``vectors``. Up to ``_LOCAL_CHECK_BYTES``
    of vectors are copied to the driver on the first check (a dense template may need thousands);
    larger inputs are checked by tasks over their blocks, so the driver's memory stays bounded."""
    blocks = EmbeddingBlocks.of(vectors)
    local: list[np.ndarray] = []

    def check(row: int, keep: np.ndarray, rank: np.ndarray) -> tuple[int, float]:
        kept_before = np.flatnonzero(keep & (rank < rank[row]))
        if len(kept_before) == 0:
            return -1, float("nan")
        if not local and blocks.n * blocks.dim * 4 <= _LOCAL_CHECK_BYTES:
            local.append(blocks.to_matrix())
        if local:
            scores = local[0][kept_before].astype(np.float64) @ local[0][row].astype(np.float64)
        else:
            scores = blocks.dots(kept_before, blocks.gather(np.array([row]), timeout_s)[0], timeout_s)
        pick = int(np.argmax(scores))
        return (int(kept_before[pick]), float(scores[pick])) if scores[pick] >= threshold else (-1, float("nan"))

    return check
