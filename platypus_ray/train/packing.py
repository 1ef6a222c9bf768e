"""Sample packing: tokenised rows into sequences of at most ``cutoff_len`` tokens, attention per row.

Rows are packed in Ray Data, one batch of rows at a time (so packing scales with the
cluster like tokenisation does), by best-fit decreasing: longest row first, each into the
fullest sequence it still fits. A row is never split. Each packed sequence carries
``position_ids`` that restart at 0 for every row; given position ids and no attention mask,
transformers builds a block-diagonal causal mask on CPU (sdpa/eager: a token attends only to
earlier tokens of its own row) and uses flash-attention 2 varlen on GPU, so no row sees
another and each row's loss is the unpacked one. The first label of every row is -100: its
token would otherwise be predicted from the previous row's last token (unpacked, the first
token is never a target either). The sequences of one batch are shuffled with a seed.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import pyarrow as pa

from platypus_ray.core.blocks import rows_only
from platypus_ray.train.prompts import IGNORE_INDEX

PACKED_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("position_ids", pa.list_(pa.int32())),
        ("num_tokens", pa.int64()),
        ("num_rows", pa.int64()),
    ]
)


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of row indices (each bin's total <= capacity, rows in input order inside a bin).
    Deterministic: ties go to the earlier row and the earlier bin."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        n = min(lengths[i], capacity)
        at = bisect.bisect_left(free, (n, -1))  # the bin with the least room that still fits
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return [sorted(b) for b in bins]


@rows_only(PACKED_SCHEMA)
def pack_batch(batch: dict[str, Any], cutoff_len: int, seed: int) -> pa.Table:
    """Ray Data batch function: tokenised rows in, packed sequences out."""
    ids, labels = list(batch["input_ids"]), list(batch["labels"])
    bins = best_fit_decreasing([len(x) for x in ids], cutoff_len)
    rng = np.random.default_rng([seed, len(ids), sum(len(x) for x in ids)])
    rows: dict[str, list[Any]] = {name: [] for name in PACKED_SCHEMA.names}
    for b in (bins[k] for k in rng.permutation(len(bins))):
        seq_ids: list[int] = []
        seq_labels: list[int] = []
        positions: list[int] = []
        for i in b:
            row_labels = [int(x) for x in labels[i]]
            row_labels[0] = IGNORE_INDEX
            seq_ids += [int(x) for x in ids[i]]
            seq_labels += row_labels
            positions += range(len(ids[i]))
        rows["input_ids"].append(seq_ids)
        rows["labels"].append(seq_labels)
        rows["position_ids"].append(positions)
        rows["num_tokens"].append(len(seq_ids))
        rows["num_rows"].append(len(b))
    return pa.Table.from_pydict(rows, schema=PACKED_SCHEMA)


def efficiency(tokens: int, sequences: int, cutoff_len: int) -> float:
    """Real tokens over the capacity of the packed sequences."""
    return tokens / (sequences * cutoff_len) if sequences else 0.0
