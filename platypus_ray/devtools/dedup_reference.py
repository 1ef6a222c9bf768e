"""Brute-force references for semantic dedup: what the tiled, distributed path must equal.

Used by the tests (decisions must be identical) and by ``platypus_ray.bench.refine``
(the speed baseline). Both are the one-vs-kept loop: O(N x kept) comparisons.
"""

from __future__ import annotations

import numpy as np


def greedy_reference(emb: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Keep-mask by the one-vs-kept rule in float64, rows visited in ``order``."""
    emb64 = np.asarray(emb, dtype=np.float64)
    kept_vectors = np.empty_like(emb64)
    n_kept = 0
    keep = np.zeros(len(emb64), dtype=bool)
    for row in order:
        if n_kept and float(np.max(kept_vectors[:n_kept] @ emb64[row])) >= threshold:
            continue
        kept_vectors[n_kept] = emb64[row]
        n_kept += 1
        keep[row] = True
    return keep


def platypus_notebook_loop(emb: np.ndarray, threshold: float) -> np.ndarray:
    """The Platypus notebook's loop as published (sklearn cosine against a Python list of kept
    embeddings, in file order), with its ``<=`` keep test turned into this project's ``>=`` remove."""
    from sklearn.metrics.pairwise import cosine_similarity

    keep = np.zeros(len(emb), dtype=bool)
    existing: list[np.ndarray] = []
    for row, vector in enumerate(emb):
        if existing and np.max(cosine_similarity([vector], existing)) >= threshold:
            continue
        existing.append(vector)
        keep[row] = True
    return keep
