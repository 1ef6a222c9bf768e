"""Batches for actor pools: rows of similar length together (little padding), longest first.

Actors take one block at a time (``max_tasks_in_flight_per_actor=1``), so with the longest
batches first the pool balances like longest-processing-time-first scheduling instead of
queueing blocks behind a slow actor.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def length_sorted_slices(table: pa.Table, lengths: np.ndarray, batch_size: int) -> list[pa.Table]:
    """``table`` reordered by ``lengths`` (descending, stable) and cut into ``batch_size`` slices."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    table = table.take(pa.array(order))
    return [table.slice(start, batch_size) for start in range(0, len(table), batch_size)]


def resolve_device(device: str) -> str:
    """``auto`` means cuda when the Ray cluster has GPUs, else cpu."""
    import ray

    if device != "auto":
        return device
    return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
