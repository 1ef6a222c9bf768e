"""The certificate of a semantic-dedup result, checked on every run in Ray tasks.

A kept set K is the greedy result (remove a row iff it is >= threshold to a kept row of higher
priority) iff (a) no two rows of K are >= threshold and (b) every removed row has a kept row of
higher priority at or above the threshold (by induction over priority order). Both are checked
exactly, float64 near the threshold as every search here: (a) by an exact search among the kept
rows only (:func:`kept_pairs_above`), (b) by each removed row's named witness (``matched``), one
task per embedding block. A result that fails either is an error, never a warning.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import ray

from platypus_ray.core.errors import InvariantError
from platypus_ray.core.waits import as_completed
from platypus_ray.embedding import EmbeddingBlocks
from platypus_ray.refine.dedup.greedy import DedupDecision


@dataclass
class Certificate:
    threshold: float
    kept: int
    removed: int
    kept_pairs_at_or_above: int  # (a): pairs of kept rows >= threshold; 0 when it holds
    removed_without_witness: int  # (b): removed rows whose witness is missing, not kept, later, or below
    tasks: int
    seconds: float

    @property
    def holds(self) -> bool:
        return self.kept_pairs_at_or_above == 0 and self.removed_without_witness == 0

    def as_dict(self) -> dict:
        return {"holds": self.holds, **asdict(self)}

    def line(self) -> str:
        threshold = self.threshold
        verdict = "holds" if self.holds else "FAILS"
        return (
            f"semantic dedup certificate {verdict}: {self.kept_pairs_at_or_above} pairs of the {self.kept} kept rows "
            f">= {threshold:g}; {self.removed_without_witness} of {self.removed} removed rows without an earlier "
            f"kept row >= {threshold:g} ({self.tasks} Ray tasks, {self.seconds:.1f} s)"
        )


def certificate_line(stats: dict) -> str:
    """The console line of a certificate as ``stats.json`` holds it."""
    return Certificate(**{k: v for k, v in stats.items() if k != "holds"}).line()


def certify(
    blocks: EmbeddingBlocks,
    decision: DedupDecision,
    rank: np.ndarray | None,
    threshold: float,
    kept_pairs_above,
    timeout_s: float,
) -> Certificate:
    """Check (a) and (b) for ``decision`` over ``blocks``; raise :class:`InvariantError` when either fails.
    ``rank``: each row's place in priority order; None when that is input order (``keep: first``).

    ``kept_pairs_above(kept_blocks) -> (pairs, tasks)``: the number of pairs >= threshold among the
    given rows, counted exactly (the caller picks the search: tiled all-pairs or the exact partition)."""
    start = time.perf_counter()
    kept = np.flatnonzero(decision.keep)
    pairs, tasks = kept_pairs_above(blocks.take(kept, timeout_s)) if len(kept) > 1 else (0, 0)
    unwitnessed, witness_tasks = _unwitnessed(blocks, decision, rank, threshold, timeout_s)
    certificate = Certificate(
        threshold,
        len(kept),
        blocks.n - len(kept),
        int(pairs),
        unwitnessed,
        tasks + witness_tasks,
        round(time.perf_counter() - start, 2),
    )
    if not certificate.holds:
        raise InvariantError(f"{certificate.line()}: the kept set is not the greedy rule's (a bug in semantic dedup)")
    return certificate


def _unwitnessed(
    blocks: EmbeddingBlocks, decision: DedupDecision, rank: np.ndarray | None, threshold: float, timeout_s: float
) -> tuple[int, int]:
    """(removed rows without a valid witness, tasks): one task per block of removed rows. What the
    tasks share is as small as it can be (the driver's own pages of the object store count in its
    memory): positions as int32 below 2^31 rows, no rank array for input order."""
    matched = decision.matched.astype(np.int32) if blocks.n < 2**31 else decision.matched
    shared = ray.put((decision.keep, matched, rank))
    refs = [
        _witness_task.remote(blocks.refs, blocks.offsets, b, shared, threshold)
        for b, first, end in blocks.spans()
        if not decision.keep[first:end].all()
    ]
    return sum(as_completed(refs, timeout_s)), len(refs)


@ray.remote
def _witness_task(refs: list, offsets: np.ndarray, b: int, shared: tuple, threshold: float) -> int:
    """Removed rows of block ``b`` whose ``matched`` row is not a kept row of higher priority with a
    float64 cosine >= threshold. Other blocks are fetched only when a witness lives there."""
    keep, matched, rank = shared
    first, end = int(offsets[b]), int(offsets[b + 1])
    rows = first + np.flatnonzero(~keep[first:end])
    witness = matched[rows].astype(np.int64)
    valid = witness >= 0
    earlier = witness[valid] < rows[valid] if rank is None else rank[witness[valid]] < rank[rows[valid]]
    valid[valid] = keep[witness[valid]] & earlier
    block = ray.get(refs[b])
    cosine = np.full(len(rows), -2.0)
    owner = np.searchsorted(offsets, witness, side="right") - 1
    for c in np.unique(owner[valid]):
        at = np.flatnonzero(valid & (owner == c))
        other = block if c == b else ray.get(refs[c])
        left = block[rows[at] - first].astype(np.float64)
        right = other[witness[at] - offsets[c]].astype(np.float64)
        cosine[at] = np.einsum("ij,ij->i", left, right)
    return int((~valid | (cosine < threshold)).sum())
