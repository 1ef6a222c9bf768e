"""The greedy rule over a pair graph, decided in parallel rounds of Ray tasks (Blelloch, Fineman
and Shun, SPAA 2012: the lexicographically-first maximal independent set in rounds).

The edges (higher-priority row ``hi``, lower-priority row ``lo``) are cut into parts by ranges of
``lo``, each put in the object store once. Every round, each part's task reads the decisions so
far and, for its undecided rows, removes a row with a kept earlier neighbour and keeps a row whose
earlier neighbours are all removed; it returns only the rows it newly decided. Both steps follow
from settled rows only, so the result is the sequential walk's, row for row. A random order settles
in O(log^2 n) rounds; a fixed order can chain (each link one round), so once a round settles less
than ``tail_share`` of the rows still open, the rest is walked in priority order by one task.

A row over the neighbour bound (``Pairs.incomplete``, only past ``dedup.max_pairs``) can only be
removed by the rounds (a listed kept neighbour), never kept by them: an unlisted neighbour may be
kept. Those rows are settled by :class:`.kept_check.KeptCheck` in batches: every open such row
against the rows kept since its last check (a kept row is final, so a match removes it at once);
when neither the rounds nor the check decide anything, the first open rows in priority order
(everything before them is settled) are walked in order on the driver with their vectors. Each
removed row's match is then its best kept row: the best listed one, else the check's over all kept.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import ray

from platypus_ray.core.waits import wait_all
from platypus_ray.refine.dedup.greedy import DedupDecision, _best_in_segments
from platypus_ray.refine.dedup.kept_check import KeptCheck
from platypus_ray.refine.dedup.similarity import _EPS, Pairs

logger = logging.getLogger(__name__)

UNDECIDED, KEPT, REMOVED = 0, 1, 2
MAX_ROUNDS = 64
TAIL_SHARE = 0.01  # a round settling less than this share of the open rows hands the rest to one walk
EDGES_PER_PART = 2_000_000


def resolve_in_rounds(
    n: int,
    pairs: Pairs,
    order: np.ndarray,
    timeout_s: float,
    check: KeptCheck | None = None,
    parts: int | None = None,
    tail_share: float = TAIL_SHARE,
) -> tuple[DedupDecision, dict]:
    """The greedy rule over ``pairs`` with rows visited in ``order`` (the decision
    :func:`.greedy.resolve_greedy` gives), and what the rounds did (for ``stats.json``)."""
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    i_first = rank[pairs.i] < rank[pairs.j]
    hi, lo = np.where(i_first, pairs.i, pairs.j), np.where(i_first, pairs.j, pairs.i)
    by_lo = np.argsort(lo, kind="stable")
    hi, lo, score = hi[by_lo], lo[by_lo], pairs.score[by_lo]
    incomplete = pairs.incomplete if pairs.incomplete is not None else np.zeros(n, dtype=bool)
    if incomplete.any() and check is None:
        raise ValueError("a per-row-bounded pair search needs a KeptCheck")
    cpus = int(ray.cluster_resources().get("CPU", 1))  # a part per CPU at least: every node gets work
    cuts = _row_cuts(n, lo, parts or max(2, cpus, -(-len(lo) // EDGES_PER_PART)))
    edges = np.searchsorted(lo, cuts)
    part_refs = [
        ray.put((int(a), int(b), hi[ea:eb], lo[ea:eb], score[ea:eb], incomplete[a:b]))
        for a, b, ea, eb in zip(cuts[:-1], cuts[1:], edges[:-1], edges[1:])
    ]
    state = np.zeros(n, dtype=np.int8)
    nodes: Counter = Counter()
    log: dict = {"parts": len(part_refs), "decided_per_round": [], "seconds_per_round": []}
    _rounds(state, part_refs, timeout_s, tail_share, log, nodes)
    log["rounds"] = len(log["decided_per_round"])
    tail = np.flatnonzero(state == UNDECIDED)
    log["tail_rows"], log["tail"] = len(tail), "none"
    matched = np.full(n, -1, dtype=np.int64)
    best = np.full(n, np.nan)
    if len(tail):
        start = time.perf_counter()
        if incomplete[tail].any() and check is not None:  # (never None here: checked above)
            log["tail"] = "checked"
            log["checks"] = _settle_with_checks(state, incomplete, rank, hi, lo, part_refs, check, timeout_s, nodes)
        else:
            log["tail"] = "task"
            kept, node = wait_all([_tail.remote(part_refs, ray.put(state), tail[np.argsort(rank[tail])])], timeout_s)[0]
            state[tail] = REMOVED
            state[kept] = KEPT
            nodes[node] += 1
        log["tail_s"] = round(time.perf_counter() - start, 3)
    keep = state == KEPT
    state_ref = ray.put(state)
    for rows, match, cosine, node in wait_all([_MATCHES.remote(p, state_ref) for p in part_refs], timeout_s):
        matched[rows], best[rows] = match, cosine
        nodes[node] += 1
    unmatched = np.flatnonzero(~keep & (matched < 0))  # removed by a kept row it did not list
    if len(unmatched) and check is not None:
        matched[unmatched], best[unmatched] = check.best_before(unmatched, np.flatnonzero(keep), rank)
    log["tasks"] = sum(nodes.values())
    log["tasks_per_node"] = dict(sorted(nodes.items()))
    return DedupDecision(keep, matched, best), log


def _rounds(state: np.ndarray, part_refs: list, timeout_s: float, tail_share: float, log: dict, nodes: Counter) -> int:
    """Rounds until one settles less than ``tail_share`` of the open rows (or none): rows decided."""
    total = 0
    while (state == UNDECIDED).any() and len(log["decided_per_round"]) < MAX_ROUNDS:
        start, still_open = time.perf_counter(), int((state == UNDECIDED).sum())
        state_ref = ray.put(state)
        decided = 0
        for kept, removed, node in wait_all([_ROUND.remote(p, state_ref) for p in part_refs], timeout_s):
            state[kept], state[removed] = KEPT, REMOVED
            decided += len(kept) + len(removed)
            nodes[node] += 1
        log["decided_per_round"].append(decided)
        log["seconds_per_round"].append(round(time.perf_counter() - start, 3))
        logger.debug("refine: dedup round %d decided %d rows", len(log["decided_per_round"]), decided)
        total += decided
        if decided == 0 or decided < tail_share * still_open:
            break
    return total


PREFIX_ROWS = 4096  # open rows walked in order on the driver when nothing else decides


def _settle_with_checks(
    state: np.ndarray,
    incomplete: np.ndarray,
    rank: np.ndarray,
    hi: np.ndarray,
    lo: np.ndarray,
    part_refs: list,
    check: KeptCheck,
    timeout_s: float,
    nodes: Counter,
) -> dict:
    """Every open row decided, incomplete ones by :class:`KeptCheck` (see the module's docstring).
    Each pass decides at least one row: the first open one in priority order has every row
    before it settled and, once checked against every kept row, no kept neighbour."""
    bounds = np.searchsorted(lo, np.arange(len(state) + 1))
    seen = np.zeros(len(state), dtype=bool)  # kept rows every open incomplete row was checked against
    record = {"passes": 0, "checked_rows": 0, "removed_by_check": 0, "walked_rows": 0, "rounds": 0}
    while (state == UNDECIDED).any():
        record["passes"] += 1
        rounds: dict = {"decided_per_round": [], "seconds_per_round": []}
        decided = _rounds(state, part_refs, timeout_s, 0.0, rounds, nodes) if record["passes"] > 1 else 0
        record["rounds"] += len(rounds["decided_per_round"])
        open_rows = np.flatnonzero((state == UNDECIDED) & incomplete)
        new_kept = np.flatnonzero((state == KEPT) & ~seen)
        seen[new_kept] = True
        if len(open_rows) and len(new_kept):
            match, _ = check.best_before(open_rows, new_kept, rank)
            state[open_rows[match >= 0]] = REMOVED
            record["checked_rows"] += len(open_rows)
            record["removed_by_check"] += int((match >= 0).sum())
            decided += int((match >= 0).sum())
        if decided:
            continue
        still_open = np.flatnonzero(state == UNDECIDED)
        prefix = still_open[np.argsort(rank[still_open])][:PREFIX_ROWS]
        _walk_prefix(state, prefix, incomplete, hi, lo, bounds, check)
        record["walked_rows"] += len(prefix)
    return record


def _walk_prefix(state, prefix, incomplete, hi, lo, bounds, check: KeptCheck) -> None:
    """The greedy rule for ``prefix``, the first open rows in priority order: a row goes if a listed
    neighbour is kept or (incomplete rows) a kept prefix row before it is >= threshold by float64
    cosine; kept rows outside the prefix were checked against already."""
    vectors = check.blocks.gather(prefix, check.timeout_s)
    sims = vectors @ vectors.T
    kept_here = np.zeros(len(prefix), dtype=bool)
    for at, row in enumerate(prefix):
        if (state[hi[bounds[row] : bounds[row + 1]]] == KEPT).any():
            state[row] = REMOVED
            continue
        if incomplete[row]:
            near = np.flatnonzero(kept_here[:at] & (sims[at, :at] >= check.threshold - _EPS))
            exact = vectors[near].astype(np.float64) @ vectors[at].astype(np.float64)
            if (exact >= check.threshold).any():
                state[row] = REMOVED
                continue
        state[row], kept_here[at] = KEPT, True


def _row_cuts(n: int, lo: np.ndarray, parts: int) -> np.ndarray:
    """Row boundaries of ``parts`` ranges with about as many edges each (``lo`` sorted)."""
    if len(lo) == 0:
        return np.unique(np.linspace(0, n, min(parts, max(n, 1)) + 1).astype(np.int64))
    cuts = lo[np.linspace(0, len(lo) - 1, parts + 1).astype(np.int64)[1:-1]]
    return np.unique(np.r_[0, cuts, n]).astype(np.int64)


def _node() -> str:
    return ray.get_runtime_context().get_node_id()[:12]


@ray.remote
def _round(part: tuple, state: np.ndarray):
    """One round for rows ``a..b-1``: (newly kept, newly removed, node)."""
    a, b, hi, lo, _score, incomplete = part
    mine = state[a:b] == UNDECIDED
    open_edges = mine[lo - a]
    p_hi, p_lo = hi[open_edges], lo[open_edges] - a
    neighbour = state[p_hi]
    any_kept = np.bincount(p_lo[neighbour == KEPT], minlength=b - a) > 0
    still_open = np.bincount(p_lo[neighbour == UNDECIDED], minlength=b - a) > 0
    removed = mine & any_kept
    kept = mine & ~any_kept & ~still_open & ~incomplete  # every earlier neighbour removed (or none)
    return a + np.flatnonzero(kept), a + np.flatnonzero(removed), _node()


@ray.remote
def _tail(part_refs: list, state: np.ndarray, rows: np.ndarray):
    """The undecided ``rows`` (in priority order) walked one by one: (kept rows, node)."""
    state = state.copy()
    parts = [ray.get(ref) for ref in part_refs]
    hi = np.concatenate([p[2] for p in parts])
    lo = np.concatenate([p[3] for p in parts])
    _walk(state, rows, hi, lo, np.searchsorted(lo, np.arange(len(state) + 1)))
    return rows[state[rows] == KEPT], _node()


def _walk(state: np.ndarray, rows: np.ndarray, hi: np.ndarray, lo: np.ndarray, bounds: np.ndarray) -> None:
    """The sequential rule for ``rows`` in priority order (every earlier row is settled when its turn
    comes): a row goes iff a listed neighbour is kept."""
    for row in rows:
        state[row] = REMOVED if (state[hi[bounds[row] : bounds[row + 1]]] == KEPT).any() else KEPT


@ray.remote
def _matches(part: tuple, state: np.ndarray):
    """Each removed row's best-scoring kept neighbour (the first listed, on a tie)."""
    _a, _b, hi, lo, score, _incomplete = part
    listed = (state[lo] == REMOVED) & (state[hi] == KEPT)
    rows, first = _best_in_segments(lo[listed], score[listed])
    return rows, hi[listed][first], score[listed][first], _node()


# Parts go to every node (SPREAD): a round's tasks are short and read little, so the default's
# preference for the driver's node would leave the other nodes idle.
_ROUND = _round.options(scheduling_strategy="SPREAD")
_MATCHES = _matches.options(scheduling_strategy="SPREAD")
