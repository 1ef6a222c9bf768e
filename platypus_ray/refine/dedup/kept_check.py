"""Rows checked in batches against the kept rows by their vectors, in Ray tasks over the blocks.

Past ``dedup.max_pairs`` a pair search keeps only each row's best ``neighbours_per_row``
higher-priority neighbours; a row with more (``Pairs.incomplete``) none of whose listed neighbours
is kept may still have an unlisted kept one. :meth:`KeptCheck.best_before` answers that for many
such rows at once: one task per embedding block holding kept rows, float32 products a tile at a
time, every product within ``_EPS`` of the threshold or above re-scored in float64 (the searches'
rule), and per row the best kept row of higher priority at or above the threshold (the lowest row
id on a tie). The driver sends the queries' vectors and gets back one match per query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray

from platypus_ray.core.waits import wait_all
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.greedy import _best_in_segments
from platypus_ray.refine.dedup.similarity import _EPS

QUERY_ROWS = 16384  # queries sent per pass: 16384 x dim float32 (25 MB at 384 dims)
TILE = 4096  # queries x kept rows per product inside a task: 64 MiB


@dataclass
class KeptCheck:
    blocks: EmbeddingBlocks
    threshold: float
    timeout_s: float

    def best_before(self, queries: np.ndarray, kept: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each row of ``queries``: (its best row of ``kept`` with higher priority (lower
        ``rank``) and cosine >= threshold, or -1; that float64 cosine, or nan)."""
        match = np.full(len(queries), -1, dtype=np.int64)
        score = np.full(len(queries), np.nan)
        kept = np.sort(np.asarray(kept, dtype=np.int64))
        if len(queries) == 0 or len(kept) == 0:
            return match, score
        per_block = self.blocks._by_block(kept)
        rank_ref = ray.put(rank)
        for start in range(0, len(queries), QUERY_ROWS):
            rows = np.asarray(queries[start : start + QUERY_ROWS], dtype=np.int64)
            vectors = ray.put((rows, self.blocks.gather(rows, self.timeout_s)))
            found = wait_all(
                [
                    _best_in_block.remote(
                        self.blocks.refs[b], local, int(self.blocks.offsets[b]), vectors, rank_ref, self.threshold
                    )
                    for b, local, _ in per_block
                ],
                self.timeout_s,
            )
            best = np.full(len(rows), -1.0)
            pick = np.full(len(rows), -1, dtype=np.int64)
            for part_match, part_score in found:  # blocks in row order: a tie keeps the earlier block's row
                better = (part_match >= 0) & ((part_score > best) | (pick < 0))
                best[better], pick[better] = part_score[better], part_match[better]
            hit = pick >= 0
            match[start : start + len(rows)][hit] = pick[hit]
            score[start : start + len(rows)][hit] = best[hit]
        return match, score


@ray.remote
def _best_in_block(
    block: np.ndarray, local: np.ndarray, offset: int, queries: tuple, rank: np.ndarray, threshold: float
):
    """The queries' best kept row among ``local`` rows of this block (see :meth:`KeptCheck.best_before`)."""
    rows, vectors = queries
    kept = block[local]
    kept_ids = local + offset
    match = np.full(len(rows), -1, dtype=np.int64)
    score = np.full(len(rows), -1.0)
    for q in range(0, len(rows), TILE):
        q_rows, q_vec = rows[q : q + TILE], vectors[q : q + TILE]
        for k in range(0, len(kept), TILE):
            k_vec, k_ids = kept[k : k + TILE], kept_ids[k : k + TILE]
            sims = q_vec @ k_vec.T
            sims[rank[k_ids][None, :] >= rank[q_rows][:, None]] = -2.0  # higher priority only
            i, j = np.nonzero(sims >= threshold - _EPS)
            if len(i) == 0:
                continue
            exact = np.einsum("ij,ij->i", q_vec[i].astype(np.float64), k_vec[j].astype(np.float64))
            at = exact >= threshold
            i, j, exact = i[at], j[at], exact[at]
            # per query: the highest, the lowest id on a tie (nonzero lists a query's ids ascending)
            hit, first = _best_in_segments(i, exact)
            qi, best_ids, best = hit + q, k_ids[j[first]], exact[first]
            better = (match[qi] < 0) | (best > score[qi]) | ((best == score[qi]) & (best_ids < match[qi]))
            match[qi[better]], score[qi[better]] = best_ids[better], best[better]
    return match, np.where(match >= 0, score, np.nan)
