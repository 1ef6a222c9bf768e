"""Unit vectors kept in the object store as blocks of consecutive keys; the driver holds references.

Refine's embedding matrix (rows x 384 float32: 1.5 GB per million rows) never reaches the
driver. The embed step assembles the actors' output into blocks of consecutive keys
(:func:`assemble`); every search over it (exact tiles, clusters, contamination, recall, the
collapse check) runs as Ray tasks that read the blocks they need from shared memory, and
the driver gets back compact per-row numbers. Only samples (recall, k-means, benchmark
probes) are gathered to the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray

from platypus_ray.core.blocks import has_rows
from platypus_ray.core.waits import wait_all

ROWS_PER_BLOCK = 65536
_SPLIT_GROUPS = 32  # producer batches are split in this many groups: pieces = groups x blocks
_TIMEOUT_S = 3600.0


class DimensionMismatch(ValueError):
    """Vectors of different widths were to be combined (a cache written by another model)."""


@dataclass
class EmbeddingBlocks:
    """Rows ``offsets[b]:offsets[b+1]`` of an (n, dim) float32 matrix live in object ``refs[b]``."""

    refs: list
    offsets: np.ndarray
    dim: int

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def empty(cls) -> EmbeddingBlocks:
        return cls([], np.zeros(1, dtype=np.int64), 0)

    @classmethod
    def of(cls, vectors: EmbeddingBlocks | np.ndarray) -> EmbeddingBlocks:
        """Blocks as they are, or a driver matrix (tests, benchmarks, small inputs) put into blocks."""
        return vectors if isinstance(vectors, EmbeddingBlocks) else cls.from_matrix(vectors)

    @classmethod
    def from_matrix(cls, emb: np.ndarray, rows_per_block: int = ROWS_PER_BLOCK) -> EmbeddingBlocks:
        emb = np.asarray(emb, dtype=np.float32)
        starts = list(range(0, len(emb), rows_per_block))
        refs = [ray.put(np.ascontiguousarray(emb[s : s + rows_per_block])) for s in starts]
        return cls(refs, np.array(starts + [len(emb)], dtype=np.int64), emb.shape[1] if emb.ndim == 2 else 0)

    def spans(self):
        """(block index, first row, end row) of every block."""
        return [(b, int(self.offsets[b]), int(self.offsets[b + 1])) for b in range(len(self.refs))]

    def _by_block(self, rows: np.ndarray):
        """(block index, rows inside it relative to the block, positions in ``rows``) for ascending ``rows``."""
        block = np.searchsorted(self.offsets, rows, side="right") - 1
        bounds = np.flatnonzero(np.r_[True, block[1:] != block[:-1], True]) if len(rows) else np.zeros(1, np.int64)
        return [
            (int(block[a]), rows[a:b] - self.offsets[block[a]], slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])
        ]

    def take(self, rows: np.ndarray, timeout_s: float = _TIMEOUT_S) -> EmbeddingBlocks:
        """The vectors of ascending ``rows`` as new blocks (a block wholly taken is shared, not copied)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == self.n:
            return self
        refs, counts = [], []
        for b, local, _ in self._by_block(rows):
            whole = len(local) == self.offsets[b + 1] - self.offsets[b]
            refs.append(self.refs[b] if whole else _take.remote(self.refs[b], local))
            counts.append(len(local))
        wait_all([r for r in refs if r not in self.refs], timeout_s)
        return EmbeddingBlocks(refs, np.r_[0, np.cumsum(counts)].astype(np.int64), self.dim)

    def gather(self, rows: np.ndarray, timeout_s: float = _TIMEOUT_S) -> np.ndarray:
        """The vectors of ``rows`` (any order) on the driver: for samples and probes, not corpora."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        parts = self._by_block(rows[order])
        for (_, _, where), part in zip(
            parts, wait_all([_take.remote(self.refs[b], local) for b, local, _ in parts], timeout_s)
        ):
            out[order[where]] = part
        return out

    def dots(self, rows: np.ndarray, vector: np.ndarray, timeout_s: float = _TIMEOUT_S) -> np.ndarray:
        """Float64 ``vectors[rows] . vector`` for ascending ``rows``."""
        parts = self._by_block(np.asarray(rows, dtype=np.int64))
        found = wait_all([_dots.remote(self.refs[b], local, vector) for b, local, _ in parts], timeout_s)
        return np.concatenate(found) if found else np.empty(0)

    def group_sums(self, groups: np.ndarray, n_groups: int, timeout_s: float = _TIMEOUT_S) -> np.ndarray:
        """(n_groups, dim) float64 sums of the vectors of each group (``groups``: one int per row)."""
        sums = np.zeros((n_groups, self.dim))
        for part in wait_all(
            [_group_sums.remote(self.refs[b], groups[a:e], n_groups) for b, a, e in self.spans()], timeout_s
        ):
            sums += part
        return sums

    def to_matrix(self) -> np.ndarray:
        """The whole matrix on the driver: benchmarks and tests on small inputs only."""
        return np.concatenate(ray.get(self.refs)) if self.refs else np.zeros((0, self.dim), dtype=np.float32)


def assemble(
    sources: list, n: int, timeout_s: float = _TIMEOUT_S, rows_per_block: int = ROWS_PER_BLOCK
) -> EmbeddingBlocks:
    """Blocks of consecutive keys from ``sources``: object refs of ``{"key", "embedding"}`` batches in
    any order that hold every key 0..n-1 exactly once. Each batch is split by key range in a
    task and each block is filled by a task: no vector passes through the driver."""
    bounds = np.r_[np.arange(0, n, rows_per_block), n].astype(np.int64)
    n_blocks = len(bounds) - 1
    if n_blocks == 1:
        per_block = [list(sources)]
    else:
        groups = np.array_split(np.arange(len(sources)), min(len(sources), _SPLIT_GROUPS))
        split = _split_by_key.options(num_returns=n_blocks)
        pieces = [split.remote(bounds, *[sources[s] for s in group]) for group in groups if len(group)]
        per_block = [[p[b] for p in pieces] for b in range(n_blocks)]
    made = [
        _fill.options(num_returns=2).remote(int(bounds[b]), int(bounds[b + 1]), *per_block[b]) for b in range(n_blocks)
    ]
    infos = wait_all([m[1] for m in made], timeout_s)
    dims = sorted({d for info in infos for d in info["dims"]})
    if len(dims) > 1:
        raise DimensionMismatch(f"vectors of {dims} dimensions")
    bad = [info for info in infos if info["missing"] or info["repeated"]]
    if bad:  # a bug, not an input problem: never hand out blocks with holes
        raise RuntimeError(
            f"assembling {n} vectors: {sum(i['missing'] for i in bad)} keys missing, "
            f"{sum(i['repeated'] for i in bad)} repeated"
        )
    return EmbeddingBlocks([m[0] for m in made], bounds, dims[0] if dims else 0)


def _vectors_of(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    if not has_rows(batch):  # a block without rows may have no columns at all (platypus_ray/core/blocks.py)
        return np.empty(0, np.int64), np.zeros((0, 0), dtype=np.float32)
    keys = np.asarray(batch["key"], dtype=np.int64)
    vectors = np.asarray(batch["embedding"], dtype=np.float32)
    return keys, vectors.reshape(len(keys), -1) if len(keys) else np.zeros((0, 0), dtype=np.float32)


@ray.remote
def _split_by_key(bounds: np.ndarray, *batches: dict):
    """This group's (key, vector) rows, one piece per key range."""
    parts = [_vectors_of(b) for b in batches]
    parts = [p for p in parts if len(p[0])] or [(np.empty(0, np.int64), np.zeros((0, 0), np.float32))]
    dims = {p[1].shape[1] for p in parts}
    keys = np.concatenate([p[0] for p in parts])
    if len(dims) > 1:  # no vectors; every fill task reports the widths seen
        return ({"key": keys[:0], "embedding": np.zeros((0, 0), np.float32), "dims": sorted(dims)},) * (len(bounds) - 1)
    vectors = np.concatenate([p[1] for p in parts])
    block = np.searchsorted(bounds, keys, side="right") - 1
    order = np.argsort(block, kind="stable")
    cuts = np.searchsorted(block[order], np.arange(len(bounds)))
    return tuple({"key": keys[order[a:b]], "embedding": vectors[order[a:b]]} for a, b in zip(cuts[:-1], cuts[1:]))


@ray.remote
def _fill(start: int, stop: int, *pieces: dict):
    """The block of keys start..stop-1, and what went into it (widths seen, keys missing or repeated)."""
    dims = {d for p in pieces for d in p.get("dims", [])}
    parts = [_vectors_of(p) for p in pieces]
    dims |= {v.shape[1] for k, v in parts if len(k)}
    dim = min(dims) if dims else 0
    out = np.zeros((stop - start, dim), dtype=np.float32)
    seen = np.zeros(stop - start, dtype=np.int64)
    for keys, vectors in parts:
        if len(keys) and vectors.shape[1] == dim:
            out[keys - start] = vectors
            np.add.at(seen, keys - start, 1)
    return out, {"dims": sorted(dims), "missing": int((seen == 0).sum()), "repeated": int((seen > 1).sum())}


@ray.remote
def _take(block: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block[rows])


@ray.remote
def _dots(block: np.ndarray, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return block[rows].astype(np.float64) @ vector.astype(np.float64)


@ray.remote
def _group_sums(block: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    sums = np.zeros((n_groups, block.shape[1] if block.ndim == 2 else 0))
    order = np.argsort(groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0]) if len(groups) else np.empty(0, np.int64)
    if len(starts):
        sums[groups[order][starts]] = np.add.reduceat(block[order].astype(np.float64), starts, axis=0)
    return sums
