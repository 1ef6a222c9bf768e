"""Right padding: rows of token ids of different lengths as one rectangular batch.

The one padding rule of training (``train/worker.py``'s collators) and scoring
(``evaluate/scoring.py``): each row starts at column 0 and the rest of its line is a fill value,
so a causal model sees every real token exactly as it would alone. torch is imported inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def padded_width(lengths: Sequence[int], multiple_of: int = 1) -> int:
    """The longest length rounded up to a multiple of ``multiple_of`` (8 for training: tensor-core tiles)."""
    return -(-max(lengths) // multiple_of) * multiple_of


def right_pad(rows: Sequence[Sequence[int]], fill: int, width: int) -> Any:
    """A ``(len(rows), width)`` int64 tensor: row ``k`` holds ``rows[k]`` from column 0, then ``fill``."""
    import torch

    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for k, row in enumerate(rows):
        out[k, : len(row)] = torch.tensor(row, dtype=torch.long)  # a copy: Ray Data hands read-only arrays
    return out


def attention_mask(lengths: Sequence[int], width: int) -> Any:
    """A ``(len(lengths), width)`` int64 tensor: 1 over each row's real tokens, 0 over its padding."""
    import torch

    return (torch.arange(width)[None, :] < torch.as_tensor(lengths, dtype=torch.long)[:, None]).long()
