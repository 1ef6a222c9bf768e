"""Exact cosine similarity search as parallel Ray tasks over tiles of unit vectors.

The vectors stay in the object store (:class:`~platypus_ray.embedding.vectors.EmbeddingBlocks`).
Each task owns ``tile`` rows and walks the column tiles block by block, so a task never
holds more than a ``tile x tile`` similarity matrix; no N x N matrix exists anywhere.
Tiles are multiplied in float32 (on a GPU when one is assigned); every candidate pair
(float32 cosine within ``_EPS`` of the threshold or above) is re-scored in float64, so
decisions match a float64 brute-force reference instead of depending on the GEMM's
summation order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import ray

from platypus_ray.core.devices import actor_device
from platypus_ray.core.waits import as_completed
from platypus_ray.embedding import EmbeddingBlocks

if TYPE_CHECKING:  # torch loads in the tasks that use it, not in the driver (1 s of every refine start)
    import torch

_EPS = 1e-5
# Tiles are read-only views of the shared object-store array; torch warns but never writes to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def bf16_margin(dim: int) -> float:
    """A bound on |bfloat16 product - exact cosine| for unit vectors: each factor rounded to 8
    significant bits (unit roundoff u = 2^-8) gives (2u + u^2) |x||y|; the float32 accumulation of
    ``dim`` terms at most dim * 2^-24; the bfloat16 result one more u. Doubled where cheap."""
    u = 2.0**-8
    return 3 * u + 2 * u * u + 2 * dim * 2.0**-24 + 1e-6


class ProductBuffer:
    """One output tensor reused by a task's tile products (torch): a fresh 32-64 MiB result each
    tile is mapped and page-faulted anew (torch's CPU allocator hands large blocks back to the OS),
    which made the bfloat16 products about 1.4x slower on CPU. Each product is a contiguous view of
    the buffer, valid until the next one."""

    def __init__(self) -> None:
        self.flat: torch.Tensor | None = None

    def product(self, left: torch.Tensor, right_t: torch.Tensor) -> torch.Tensor:
        import torch

        rows, cols = left.shape[0], right_t.shape[1]
        flat = self.flat
        if flat is None or flat.numel() < rows * cols or flat.dtype != left.dtype or flat.device != left.device:
            flat = self.flat = torch.empty(rows * cols, dtype=left.dtype, device=left.device)
        return torch.matmul(left, right_t, out=flat[: rows * cols].view(rows, cols))


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


def all_pairs_above(
    vectors: EmbeddingBlocks | np.ndarray,
    threshold: float,
    tile: int,
    num_gpus: float = 0.0,
    timeout_s: float = 3600.0,
    rank: np.ndarray | None = None,
    per_row: int | None = None,
    max_pairs: int = 0,
) -> Pairs:
    """Every pair of rows with cosine >= threshold (exact), plus nearest-neighbour scores.

    With ``rank`` (priority: lower is kept first) and ``per_row``, memory has a bound: once more
    than ``max_pairs`` pairs are held (0: from the start), each row keeps only its ``per_row``
    best neighbours of higher priority, so memory is O(rows x per_row) however dense a cluster
    is (a template filled in 10,000 times has ~5*10^7 pairs). Under the budget every pair is kept."""
    blocks = EmbeddingBlocks.of(vectors)
    n = blocks.n
    nearest = np.full(n, -1.0, dtype=np.float32)
    bounded = per_row is not None and rank is not None
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return Pairs(
            empty, empty, np.empty(0), nearest, np.zeros(n, dtype=bool) if bounded else None, 0 if bounded else None
        )
    rank_ref = ray.put(rank if bounded else None)
    task = _pairs_in_row_block.options(num_gpus=num_gpus)
    budget = PairBudget(per_row, max_pairs) if per_row is not None and bounded else None
    refs = [
        task.remote(blocks.refs, blocks.offsets, b, start, min(start + tile, end), tile, threshold, rank_ref, budget)
        for b, first, end in blocks.spans()
        for start in range(first, end, tile)
    ]
    held = HeldPairs(n, budget)
    for start, i, j, score, row_max, col_max, block_counts, task_bounded in as_completed(refs, timeout_s):
        held.add(i, j, score, task_bounded)  # bounded: j is the lower-priority row
        if block_counts is not None:
            held.counts[start:] += block_counts
        np.maximum(nearest[start : start + len(row_max)], row_max, out=nearest[start : start + len(row_max)])
        np.maximum(nearest[start:], col_max, out=nearest[start:])
    i, j, score = held.pairs()
    i, j = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((j, i))
    return Pairs(i[order], j[order], score[order], nearest, *held.bound_fields())


@dataclass(frozen=True)
class PairBudget:
    """Memory bound of a pair search: past ``max_pairs`` held pairs (0: always), each row keeps its
    ``per_row`` best higher-priority neighbours and rows that had more are marked incomplete."""

    per_row: int
    max_pairs: int = 0

    def over(self, held: int) -> bool:
        return held > self.max_pairs


class HeldPairs:
    """The pairs a search's driver holds as task results arrive: all of them while they fit the
    budget, then (for good, and in every later task's result too) each row's ``per_row`` best.
    ``distinct``: results may repeat a pair (a row placed in two clusters), counted once."""

    def __init__(self, n: int, budget: PairBudget | None, distinct: bool = False):
        self.budget, self.distinct = budget, distinct
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.held = 0
        self._recount_at = 0
        self.bounding = budget is not None and budget.max_pairs == 0
        self.counts = np.zeros(n, dtype=np.int64)  # candidates per lower-priority row, before any bound

    def add(self, hi: np.ndarray, lo: np.ndarray, score: np.ndarray, task_bounded: bool = False) -> None:
        self.parts.append((hi, lo, score))
        self.held += len(hi)
        if self.budget is None:
            return
        if not self.bounding and self.budget.over(self.held):
            if not self.distinct:
                self.bounding = True
            elif (
                self.held > self._recount_at
            ):  # repeats cost no budget: count distinct pairs (again past a quarter more)
                self.parts = [self.pairs()]
                self.held = len(self.parts[0][0])
                self._recount_at = self.held + self.budget.max_pairs // 4
                self.bounding = self.budget.over(self.held)
        self.bounding = self.bounding or task_bounded
        if self.bounding:
            self.parts = [_top_per_row(*self.pairs(), self.budget.per_row)]
            self.held = len(self.parts[0][0])

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hi, lo, score) of every pair held now."""
        joined: tuple[np.ndarray, np.ndarray, np.ndarray] = _NO_PAIRS
        if self.parts:
            his, los, scores = zip(*self.parts)
            joined = (np.concatenate(his), np.concatenate(los), np.concatenate(scores))
        return _distinct_pairs(*joined) if self.distinct and len(self.parts) > 1 else joined

    def bound_fields(self) -> tuple[np.ndarray | None, int | None]:
        """(incomplete, total) for :class:`Pairs`: nothing marked while every pair was kept."""
        if self.budget is None:
            return None, None
        incomplete = self.counts > self.budget.per_row if self.bounding else np.zeros(len(self.counts), dtype=bool)
        return incomplete, int(self.counts.sum())


_NO_PAIRS = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))


def pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """One int64 per unordered pair of row indices below ``n``: (i, j) and (j, i) get the same key."""
    return np.minimum(i, j) * np.int64(n) + np.maximum(i, j)


def _distinct_pairs(i: np.ndarray, j: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair once (the same pair found twice has the same score)."""
    n = int(max(i.max(initial=0), j.max(initial=0))) + 1
    _, first = np.unique(pair_keys(i, j, n), return_index=True)
    return i[first], j[first], score[first]


def _top_per_row(
    hi: np.ndarray, lo: np.ndarray, score: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring (hi, lo) pairs of every ``lo``."""
    order = np.lexsort((-score, lo))
    hi, lo, score = hi[order], lo[order], score[order]
    group_start = np.flatnonzero(np.r_[True, lo[1:] != lo[:-1]])
    position = np.arange(len(lo)) - np.repeat(group_start, np.diff(np.r_[group_start, len(lo)]))
    keep = position < k
    return hi[keep], lo[keep], score[keep]


def best_matches(
    queries: EmbeddingBlocks | np.ndarray,
    references: np.ndarray,
    threshold: float,
    tile: int,
    num_gpus: float = 0.0,
    timeout_s: float = 3600.0,
) -> BestMatch:
    """For each query row, its most similar reference row; exact (float64) around ``threshold``.
    The references (benchmark probes) are few and go to every task; the queries stay in blocks."""
    blocks = EmbeddingBlocks.of(queries)
    n = blocks.n
    if n == 0 or len(references) == 0:
        return BestMatch(np.full(n, -1, dtype=np.int64), np.full(n, -1.0))
    r_ref = ray.put(np.ascontiguousarray(references, dtype=np.float32))
    task = _best_in_row_block.options(num_gpus=num_gpus)
    index = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.float64)
    refs = [
        task.remote(blocks.refs[b], first, start - first, min(start + tile, end) - first, r_ref, tile, threshold)
        for b, first, end in blocks.spans()
        for start in range(first, end, tile)
    ]
    for start, best_idx, best_score in as_completed(refs, timeout_s):
        index[start : start + len(best_idx)] = best_idx
        score[start : start + len(best_idx)] = best_score
    return BestMatch(index, score)


def _device(num_gpus_assigned: bool) -> torch.device:
    import torch

    return torch.device(actor_device("cuda" if num_gpus_assigned else "cpu"))  # cpu for a simulated GPU (devices.py)


@ray.remote
def _pairs_in_row_block(
    refs: list,
    offsets: np.ndarray,
    b: int,
    start: int,
    stop: int,
    tile: int,
    threshold: float,
    rank: np.ndarray | None,
    budget: PairBudget | None,
):
    """Pairs (i in rows start..stop-1 of block ``b``, j > i) with cosine >= threshold, scored in
    float64 (candidates come from float32 tiles at threshold - _EPS). With a ``budget``: returned
    as (higher-priority row, lower-priority row) with each row's candidate count, and bounded to
    ``per_row`` per lower-priority row once this task alone holds more than the budget. Column
    blocks are read from the object store one at a time (``refs`` is a list, so Ray does not
    fetch them all up front)."""
    import torch

    device = _device(bool(ray.get_gpu_ids()))
    n = int(offsets[-1])
    block = ray.get(refs[b])
    rows32 = np.array(block[start - offsets[b] : stop - offsets[b]])  # a copy: object-store arrays are read-only
    rows64 = rows32.astype(np.float64)
    rows = torch.from_numpy(rows32).to(device)
    row_max = torch.full((stop - start,), -1.0, device=device)
    col_max = torch.full((n - start,), -1.0, device=device)
    held = HeldPairs(n - start, budget)
    buffer = ProductBuffer()
    for c in range(b, len(refs)):
        columns = block if c == b else ray.get(refs[c])
        for col in range(start if c == b else int(offsets[c]), int(offsets[c + 1]), tile):
            col_stop = min(col + tile, int(offsets[c + 1]))
            cols = columns[col - offsets[c] : col_stop - offsets[c]]
            right = torch.from_numpy(np.array(cols)).to(device)  # a copy: object-store arrays are read-only
            sims = buffer.product(rows, right.T)
            if col == start:  # diagonal tile: only j > i counts
                sims = torch.triu(sims, diagonal=1) + torch.tril(torch.full_like(sims, -2.0))
            row_max = torch.maximum(row_max, sims.amax(dim=1))  # amax: max(dim=0) is ~10x slower on CPU
            col_max[col - start : col_stop - start] = torch.maximum(
                col_max[col - start : col_stop - start], sims.amax(dim=0)
            )
            hit_i, hit_j = (h.cpu().numpy() for h in torch.nonzero(sims >= threshold - _EPS, as_tuple=True))
            score = np.einsum("ij,ij->i", rows64[hit_i], cols[hit_j].astype(np.float64))
            i, j = hit_i + start, hit_j + col
            if budget is not None:
                if rank is None:  # the caller ships the rows' rank with every budget
                    raise ValueError("a pair budget needs the rows' rank")
                i_first = rank[i] < rank[j]
                i, j = np.where(i_first, i, j), np.where(i_first, j, i)  # (higher, lower priority)
                held.counts += np.bincount(j - start, minlength=n - start)
            exact = score >= threshold
            held.add(i[exact], j[exact], score[exact])
    i, j, score = held.pairs()
    counts = held.counts if budget is not None else None
    return start, i, j, score, row_max.cpu().numpy(), col_max.cpu().numpy(), counts, held.bounding


COUNT_TILE = 8192  # columns per product of count_pairs_above: a 2048 x 8192 float32 tile is 64 MiB


def count_pairs_above(
    vectors: EmbeddingBlocks | np.ndarray,
    threshold: float,
    tile: int,
    num_gpus: float = 0.0,
    timeout_s: float = 3600.0,
    precision: str = "auto",
) -> tuple[int, int]:
    """(pairs i < j with float64 cosine >= threshold, tasks): the certificate's search among kept
    rows, which needs a count only. One task per ``tile`` rows against every later row; products in
    float32, or bfloat16 on CPU (``precision``: ``auto`` as :func:`.cost.choose_precision` measures
    it on each worker) with every candidate within :func:`bf16_margin` of the threshold re-scored
    in float64 (float32: within ``_EPS``), so the count is the float64 one."""
    blocks = EmbeddingBlocks.of(vectors)
    task = _count_in_row_block.options(num_gpus=num_gpus)
    refs = [
        task.remote(blocks.refs, blocks.offsets, b, start, min(start + tile, end), threshold, precision)
        for b, first, end in blocks.spans()
        for start in range(first, end, tile)
    ]
    return int(sum(as_completed(refs, timeout_s))), len(refs)


@ray.remote
def _count_in_row_block(
    refs: list, offsets: np.ndarray, b: int, start: int, stop: int, threshold: float, precision: str
) -> int:
    from threadpoolctl import threadpool_limits

    from platypus_ray.refine.dedup.cost import choose_precision

    n = int(offsets[-1])
    block = ray.get(refs[b])
    rows32 = np.ascontiguousarray(block[start - offsets[b] : stop - offsets[b]])
    gpu = bool(ray.get_gpu_ids())
    if gpu:
        precision = "float32"
    else:
        precision, _ = choose_precision(precision, n, rows32.shape[1])
    products = _TileProducts(rows32, precision, _device(gpu) if gpu or precision == "bfloat16" else None)
    low = threshold - (bf16_margin(rows32.shape[1]) if precision == "bfloat16" else _EPS)
    found = 0
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    with threadpool_limits(limits=threads):
        for c in range(b, len(refs)):
            columns = block if c == b else ray.get(refs[c])
            for col in range(start if c == b else int(offsets[c]), int(offsets[c + 1]), COUNT_TILE):
                cols = columns[col - offsets[c] : min(col + COUNT_TILE, int(offsets[c + 1])) - offsets[c]]
                i, j = products.candidates(cols, low)
                keep = (j + col) > (i + start)  # each pair once: j > i
                i, j = i[keep], j[keep]
                exact = np.einsum("ij,ij->i", rows32[i].astype(np.float64), cols[j].astype(np.float64))
                found += int((exact >= threshold).sum())
    return found


class _TileProducts:
    """A task's rows against column tiles: (row, column) of every product >= ``low``."""

    def __init__(self, rows: np.ndarray, precision: str, device):
        self.rows, self.device = rows, device
        if device is not None:
            import torch

            dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
            self.torch, self.dtype = torch, dtype
            self.on_device = torch.from_numpy(rows).to(device=device, dtype=dtype)
            self.buffer = ProductBuffer()

    def candidates(self, cols: np.ndarray, low: float) -> tuple[np.ndarray, np.ndarray]:
        """Each row's maximum first, then the comparison on the rows that reach ``low`` only: among
        kept rows few do, and a full comparison costs as much as the product in bfloat16."""
        if self.device is None:  # numpy's BLAS: float32 on CPU
            sims = self.rows @ cols.T
            hot = np.flatnonzero(sims.max(axis=1) >= low)
            i, j = np.nonzero(sims[hot] >= low)
            return hot[i], j
        torch = self.torch
        right = torch.from_numpy(np.array(cols)).to(device=self.device, dtype=self.dtype)
        sims = self.buffer.product(self.on_device, right.T)
        hot = torch.nonzero(sims.amax(dim=1) >= low, as_tuple=True)[0]
        i, j = torch.nonzero(sims[hot] >= low, as_tuple=True)
        return hot[i].cpu().numpy(), j.cpu().numpy()


@ray.remote
def _best_in_row_block(
    block: np.ndarray, first: int, lo: int, hi: int, references: np.ndarray, tile: int, threshold: float
):
    """Best reference for each query row lo..hi-1 of a block whose first row is ``first``: float32
    products on a GPU (torch) when the task has one, else numpy's BLAS (the worker loads no torch,
    2 s of every start)."""
    queries = block[lo:hi]
    if ray.get_gpu_ids():
        best_np, idx_np = _best_references_torch(queries, references, tile)
    else:
        best_np = np.full(hi - lo, -2.0, dtype=np.float32)
        idx_np = np.zeros(hi - lo, dtype=np.int64)
        for col in range(0, len(references), tile):
            sims = queries @ references[col : col + tile].T
            idx = sims.argmax(axis=1)
            values = sims[np.arange(len(sims)), idx]
            better = values > best_np
            best_np = np.where(better, values, best_np)
            idx_np = np.where(better, idx + col, idx_np)
    float32_best = best_np
    best64 = _exact_scores_between(queries, references, np.arange(hi - lo), idx_np)
    # A row whose float32 best lies within _EPS of the threshold is re-scored in float64
    # against every reference: another reference may cross the threshold where this one does not.
    for k in np.flatnonzero(np.abs(float32_best - threshold) < _EPS):
        exact = references.astype(np.float64) @ queries[k].astype(np.float64)
        idx_np[k] = int(np.argmax(exact))
        best64[k] = float(exact[idx_np[k]])
    return first + lo, idx_np, best64


def _best_references_torch(queries: np.ndarray, references: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(best float32 cosine, its reference) of each query, on this task's GPU."""
    import torch

    device = _device(True)
    rows = torch.from_numpy(np.array(queries)).to(device)
    best = torch.full((len(queries),), -2.0, device=device)
    best_idx = torch.zeros((len(queries),), dtype=torch.int64, device=device)
    for col in range(0, len(references), tile):
        sims = rows @ torch.from_numpy(references[col : col + tile]).to(device).T
        values, idx = sims.max(dim=1)
        better = values > best
        best = torch.where(better, values, best)
        best_idx = torch.where(better, idx + col, best_idx)
    return best.cpu().numpy(), best_idx.cpu().numpy()


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


def best_over_tiles(queries: np.ndarray, tiles) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best cosine over ``tiles`` ((position of the tile's first row, its vectors), in
    order) and the position of the row that gave it; -2.0 and 0 with no tiles."""
    best = np.full(len(queries), -2.0)
    arg = np.zeros(len(queries), dtype=np.int64)
    for first, kept in tiles:
        scores = queries @ kept.T
        tile_arg = scores.argmax(axis=1)
        tile_best = scores[np.arange(len(scores)), tile_arg]
        better = tile_best > best
        best[better], arg[better] = tile_best[better], tile_arg[better] + first
    return best, arg
