"""Embedding as plain Ray tasks over spans of blocks, for an encoder whose weights stay loaded in each
worker process (``use-multilingual``; see ``_in_actor_pool`` in pool.py for which path a run takes).

The rows are cut in dataset order into calls of ``rows_per_call`` consecutive rows (a call may
span blocks); each call is one Ray task that takes its blocks by reference, builds the embedder
on its worker's first call (:func:`task_embedder`) and returns an Arrow block of vectors. Ray
core starts as many tasks as there are CPUs at once; Ray Data's task pool started one while its
input operator held a CPU budget, and its repartition, a job of its own, took 2 s of a 5k-row
run's 13 on 2 cores (the profile in docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from platypus_ray.core.blocks import BlockSpan, block_spans

_TASK_EMBEDDERS: dict = {}  # (embedder class, its arguments) -> the embedder, once per worker process


def task_embedder(embedder: type, ctor: dict) -> Any:
    """``embedder(**ctor)``, built once in this process and kept for the next calls with the same arguments."""
    identity = (embedder, tuple(sorted(ctor.items())))
    if identity not in _TASK_EMBEDDERS:
        _TASK_EMBEDDERS[identity] = embedder(**ctor)
    return _TASK_EMBEDDERS[identity]


def cut_calls(spans: list[BlockSpan], rows_per_call: int) -> list[list[BlockSpan]]:
    """``spans``' rows in order, cut into calls of ``rows_per_call`` rows (the last one shorter)."""
    calls: list[list[BlockSpan]] = []
    call: list[BlockSpan] = []
    room = rows_per_call
    for ref, start, stop in spans:
        while start < stop:
            take = min(room, stop - start)
            call.append((ref, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                calls.append(call)
                call, room = [], rows_per_call
    if call:
        calls.append(call)
    return calls


def embed_in_tasks(
    ds: ray.data.Dataset, embedder: type, ctor: dict, rows_per_call: int, cpus: float
) -> ray.data.Dataset:
    """Vectors of ``ds``'s rows (``key``, ``embedding`` and what the embedder carries), one task per call."""
    task = _embed_call.options(num_cpus=cpus)
    refs = [
        task.remote(embedder, ctor, [(start, stop) for _, start, stop in call], *[ref for ref, _, _ in call])
        for call in cut_calls(block_spans(ds), rows_per_call)
    ]
    return ray.data.from_arrow_refs(refs)


@ray.remote
def _embed_call(embedder: type, ctor: dict, bounds: list[tuple[int, int]], *blocks: Any) -> Any:
    """One call: rows ``bounds[i]`` of ``blocks[i]``, in order, as one batch (Ray Data's numpy format)."""
    from ray.data.block import BlockAccessor

    parts = [
        BlockAccessor.for_block(BlockAccessor.for_block(block).slice(start, stop)).to_batch_format("numpy")
        for block, (start, stop) in zip(blocks, bounds, strict=True)
    ]
    batch = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]} if len(parts) > 1 else parts[0]
    return BlockAccessor.batch_to_block(task_embedder(embedder, ctor)(batch))
