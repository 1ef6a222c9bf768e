"""How good was an approximate (clustered) pair search? Measured on every run, on a random sample.

For ``sample`` random rows, an exact search against **all** rows finds every pair >= the
threshold that touches a sampled row. Then:

* ``pair_recall``: the share of those exact pairs the clustered search also found, none left
  out: a pair the neighbour bound dropped (past ``dedup.max_pairs``) counts as a miss;
* ``pair_recall_within_bound``: the same, leaving out the pairs of rows over the neighbour bound
  (the bound drops them by design; the greedy walk settles such a row with an exact check);
  equal to ``pair_recall`` when every pair was held;
* ``decision_agreement``: the share of sampled rows whose keep/remove decision is what the
  greedy rule gives with their exact neighbour lists, the other rows' decisions as made.
  A missed pair only matters when it would have removed the row: that is what this counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import ray

from platypus_ray.core.waits import wait_all
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.similarity import _EPS, Pairs, _exact_scores_between, pair_keys


@dataclass
class RecallReport:
    exact_sample_rows: int
    exact_pairs: int
    found_pairs: int
    pair_recall: float
    pair_recall_within_bound: float
    decision_agreement: float
    decisions_differing: int

    def as_dict(self) -> dict:
        return asdict(self)


def measure_recall(
    blocks: EmbeddingBlocks,
    pairs: Pairs,
    keep: np.ndarray,
    rank: np.ndarray,
    threshold: float,
    sample: int,
    seed: int,
    timeout_s: float,
    tile: int = 2048,
) -> RecallReport:
    """Compare ``pairs`` (and the decisions ``keep`` made from them) with an exact search for a row sample.

    ``rank``: each row's position in priority order (0 = first)."""
    n = blocks.n
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    if len(rows) == 0:
        return RecallReport(0, 0, 0, 1.0, 1.0, 1.0, 0)
    queries = ray.put(blocks.gather(rows, timeout_s))
    found = wait_all(
        [
            _exact_block.remote(queries, ref, int(start), threshold, tile)
            for ref, start in zip(blocks.refs, blocks.offsets[:-1])
        ],
        timeout_s,
    )
    q = np.concatenate([f[0] for f in found])
    j = np.concatenate([f[1] for f in found])
    s_row = rows[q]
    self_pair = s_row == j
    s_row, j = s_row[~self_pair], j[~self_pair]
    # exact pairs that touch a sampled row, as (low, high) keys; a pair of two sampled rows appears twice
    keys = pair_keys(s_row, j, n)
    exact = np.unique(keys)
    found_keys = np.unique(pair_keys(pairs.i, pairs.j, n))
    hits = int(np.isin(exact, found_keys, assume_unique=True).sum())
    within = exact
    if pairs.incomplete is not None and pairs.incomplete.any():
        within = np.unique(keys[~pairs.incomplete[np.where(rank[s_row] > rank[j], s_row, j)]])
    hits_within = int(np.isin(within, found_keys, assume_unique=True).sum())
    # the greedy rule for each sampled row with its exact neighbours: removed iff a higher-priority one is kept
    higher_kept = (rank[j] < rank[s_row]) & keep[j]
    removed_exact = np.zeros(n, dtype=bool)
    removed_exact[s_row[higher_kept]] = True
    differing = int((removed_exact[rows] == keep[rows]).sum())
    share = lambda part, whole: part / len(whole) if len(whole) else 1.0
    return RecallReport(
        len(rows),
        len(exact),
        hits,
        share(hits, exact),
        share(hits_within, within),
        1.0 - differing / len(rows),
        differing,
    )


@ray.remote
def _exact_block(queries: np.ndarray, block: np.ndarray, start: int, threshold: float, tile: int):
    """(query index, global row) of every pair >= threshold between the queries and this block
    (numpy's BLAS in float32, float64 near the threshold; the worker loads no torch)."""
    out_q, out_j = [], []
    for s in range(0, len(queries), tile):
        sims = queries[s : s + tile] @ block.T
        qi, bj = np.nonzero(sims >= threshold - _EPS)
        close = np.abs(sims[qi, bj].astype(np.float64) - threshold) < _EPS
        exact = np.ones(len(qi), dtype=bool)
        if close.any():
            dots = _exact_scores_between(queries, block, qi[close] + s, bj[close])
            exact[np.flatnonzero(close)] = dots >= threshold
        out_q.append(qi[exact] + s)
        out_j.append(bj[exact] + start)
    return np.concatenate(out_q), np.concatenate(out_j)
