"""Exact cosine similarity search as parallel Ray tasks over tiles of unit vectors.

Each task owns one block of ``tile`` rows and walks the column tiles, so a task never
holds more than a ``tile x tile`` similarity matrix; no N x N matrix exists anywhere.
Tiles are multiplied in float32 (on a GPU when one is assigned); every pair that comes
within ``_EPS`` of the threshold is re-scored in float64, so decisions match a float64
brute-force reference instead of depending on the GEMM's summation order.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import ray
import torch

from platypus_ray.errors import UserError

_EPS = 1e-5
# Tiles are read-only views of the shared object-store array; torch warns but never writes to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass
class Pairs:
    """Pairs ``i < j`` with cosine ``score >= threshold``, and each row's nearest-neighbour cosine.

    A search bounded per row (``per_row``) keeps, for each row, only its ``per_row`` best
    neighbours of higher priority; ``incomplete`` marks the rows that had more, whose
    decision may need an exact check (see :func:`semantic_dedup.resolve_greedy`)."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray
    nearest: np.ndarray  # max cosine of each row to any other row (-1 when alone)
    incomplete: np.ndarray | None = None  # bool per row, bounded searches only
    total: int | None = None  # pairs found before the bound (float32 at threshold - 1e-5); None: len(i)

    @property
    def count(self) -> int:
        return len(self.i) if self.total is None else self.total


@dataclass
class BestMatch:
    """For each query row: the index of its most similar reference row and that cosine."""

    index: np.ndarray
    score: np.ndarray


def wait_all(refs: list, timeout_s: float) -> list:
    """Results of ``refs`` in order; if they are not all done within ``timeout_s``, cancel the
    rest (releasing their CPUs) and raise, rather than wait forever on a stuck or starved task."""
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s, fetch_local=False)
    if pending:
        _give_up(pending, len(refs), timeout_s)
    return ray.get(list(refs))


def as_completed(refs: list, timeout_s: float):
    """Yield each result as its task finishes (so the driver holds one task's output at a time);
    past ``timeout_s`` in all, cancel what is left and raise, as :func:`wait_all` does."""
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            _give_up(pending, len(refs), timeout_s)
        yield ray.get(done[0])


def _give_up(pending: list, total: int, timeout_s: float) -> None:
    for ref in pending:
        ray.cancel(ref, force=True)
    raise UserError(f"{len(pending)} of {total} similarity tasks did not finish within {timeout_s:.0f} s "
                    "(dedup.timeout_s); the cluster may lack free CPUs, or raise the bound")


def all_pairs_above(emb: np.ndarray, threshold: float, tile: int, num_gpus: float = 0.0,
                    timeout_s: float = 3600.0, rank: np.ndarray | None = None, per_row: int | None = None) -> Pairs:
    """Every pair of rows with cosine >= threshold (exact), plus nearest-neighbour scores.

    With ``rank`` (priority: lower is kept first) and ``per_row``, each row keeps only its
    ``per_row`` best neighbours of higher priority, so memory is O(rows x per_row) however
    dense a cluster is (a template filled in 10,000 times has ~5*10^7 pairs)."""
    n = len(emb)
    nearest = np.full(n, -1.0, dtype=np.float32)
    bounded = per_row is not None
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return Pairs(empty, empty, np.empty(0), nearest, np.zeros(n, dtype=bool) if bounded else None, 0 if bounded else None)
    emb_ref = ray.put(np.ascontiguousarray(emb, dtype=np.float32))
    rank_ref = ray.put(rank if bounded else None)
    task = _pairs_in_row_block.options(num_gpus=num_gpus)
    refs = [task.remote(emb_ref, start, tile, threshold - _EPS, rank_ref, per_row) for start in range(0, n, tile)]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    counts = np.zeros(n, dtype=np.int64)
    for start, i, j, s32, row_max, col_max, block_counts in as_completed(refs, timeout_s):
        found.append((i, j, s32))
        if bounded:  # j is the lower-priority row: keep its per_row best, whatever the other tasks found
            found = [_top_per_row(*map(np.concatenate, zip(*found)), per_row)]
            counts[start:] += block_counts
        np.maximum(nearest[start : start + len(row_max)], row_max, out=nearest[start : start + len(row_max)])
        np.maximum(nearest[start:], col_max, out=nearest[start:])
    i, j, _ = map(np.concatenate, zip(*found))
    score = _exact_scores(emb, i, j)
    keep = score >= threshold
    i, j, score = np.minimum(i, j)[keep], np.maximum(i, j)[keep], score[keep]
    order = np.lexsort((j, i))
    if not bounded:
        return Pairs(i[order], j[order], score[order], nearest)
    return Pairs(i[order], j[order], score[order], nearest, incomplete=counts > per_row, total=int(counts.sum()))


def _top_per_row(hi: np.ndarray, lo: np.ndarray, score: np.ndarray, k: int):
    """The ``k`` highest-scoring (hi, lo) pairs of every ``lo``."""
    order = np.lexsort((-score, lo))
    hi, lo, score = hi[order], lo[order], score[order]
    group_start = np.flatnonzero(np.r_[True, lo[1:] != lo[:-1]])
    position = np.arange(len(lo)) - np.repeat(group_start, np.diff(np.r_[group_start, len(lo)]))
    keep = position < k
    return hi[keep], lo[keep], score[keep]


def best_matches(
    queries: np.ndarray, references: np.ndarray, threshold: float, tile: int, num_gpus: float = 0.0,
    timeout_s: float = 3600.0,
) -> BestMatch:
    """For each query row, its most similar reference row; exact (float64) around ``threshold``."""
    n = len(queries)
    if n == 0 or len(references) == 0:
        return BestMatch(np.full(n, -1, dtype=np.int64), np.full(n, -1.0))
    q_ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
    r_ref = ray.put(np.ascontiguousarray(references, dtype=np.float32))
    task = _best_in_row_block.options(num_gpus=num_gpus)
    index = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.float64)
    refs = [task.remote(q_ref, r_ref, start, tile, threshold) for start in range(0, n, tile)]
    for start, best_idx, best_score in as_completed(refs, timeout_s):
        index[start : start + len(best_idx)] = best_idx
        score[start : start + len(best_idx)] = best_score
    return BestMatch(index, score)


def _device(num_gpus_assigned: bool) -> torch.device:
    return torch.device("cuda") if num_gpus_assigned and torch.cuda.is_available() else torch.device("cpu")


@ray.remote
def _pairs_in_row_block(emb: np.ndarray, start: int, tile: int, cutoff: float, rank: np.ndarray | None,
                        per_row: int | None):
    """Candidate pairs (i in this block, j > i) with float32 cosine >= cutoff. Bounded
    (``per_row``): returned as (higher-priority row, lower-priority row), at most ``per_row``
    per lower-priority row, with each row's count before the bound."""
    device = _device(bool(ray.get_gpu_ids()))
    n = len(emb)
    stop = min(start + tile, n)
    rows = torch.from_numpy(emb[start:stop]).to(device)
    row_max = torch.full((stop - start,), -1.0, device=device)
    col_max = torch.full((n - start,), -1.0, device=device)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    counts = np.zeros(n - start, dtype=np.int64) if per_row is not None else None
    for col in range(start, n, tile):
        col_stop = min(col + tile, n)
        sims = rows @ torch.from_numpy(emb[col:col_stop]).to(device).T
        if col == start:  # diagonal tile: only j > i counts
            sims = torch.triu(sims, diagonal=1) + torch.tril(torch.full_like(sims, -2.0))
        row_max = torch.maximum(row_max, sims.max(dim=1).values)
        col_max[col - start : col_stop - start] = torch.maximum(col_max[col - start : col_stop - start], sims.max(dim=0).values)
        hit_i, hit_j = torch.nonzero(sims >= cutoff, as_tuple=True)
        score = sims[hit_i, hit_j].cpu().numpy()
        i, j = (hit_i + start).cpu().numpy(), (hit_j + col).cpu().numpy()
        if counts is None:
            found.append((i, j, score))
            continue
        i_first = rank[i] < rank[j]
        hi, lo = np.where(i_first, i, j), np.where(i_first, j, i)
        counts += np.bincount(lo - start, minlength=n - start)
        found = [_top_per_row(*map(np.concatenate, zip(*found, (hi, lo, score))), per_row)]
    i, j, score = map(np.concatenate, zip(*found))
    return start, i, j, score, row_max.cpu().numpy(), col_max.cpu().numpy(), counts


@ray.remote
def _best_in_row_block(queries: np.ndarray, references: np.ndarray, start: int, tile: int, threshold: float):
    """Best reference for each query row of this block."""
    device = _device(bool(ray.get_gpu_ids()))
    stop = min(start + tile, len(queries))
    rows = torch.from_numpy(queries[start:stop]).to(device)
    best = torch.full((stop - start,), -2.0, device=device)
    best_idx = torch.zeros((stop - start,), dtype=torch.int64, device=device)
    for col in range(0, len(references), tile):
        sims = rows @ torch.from_numpy(references[col : col + tile]).to(device).T
        values, idx = sims.max(dim=1)
        better = values > best
        best = torch.where(better, values, best)
        best_idx = torch.where(better, idx + col, best_idx)
    idx_np = best_idx.cpu().numpy()
    best_np = _exact_scores_between(queries[start:stop], references, np.arange(stop - start), idx_np)
    # A row whose float32 best lies within _EPS of the threshold is re-scored in float64
    # against every reference: another reference may cross the threshold where this one does not.
    for k in np.flatnonzero(np.abs(best.cpu().numpy() - threshold) < _EPS):
        exact = references.astype(np.float64) @ queries[start + k].astype(np.float64)
        idx_np[k] = int(np.argmax(exact))
        best_np[k] = float(exact[idx_np[k]])
    return start, idx_np, best_np


def _exact_scores(emb: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Float64 cosine of the pairs (i, j) of one matrix (unit vectors: the dot product)."""
    return _exact_scores_between(emb, emb, i, j)


def _exact_scores_between(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Float64 dot products a[i] . b[j], in chunks so memory stays bounded."""
    out = np.empty(len(i), dtype=np.float64)
    for start in range(0, len(i), 65536):
        left = a[i[start : start + 65536]].astype(np.float64)
        right = b[j[start : start + 65536]].astype(np.float64)
        out[start : start + 65536] = np.einsum("ij,ij->i", left, right)
    return out
