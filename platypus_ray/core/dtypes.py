"""Model dtypes by name: the one place ``auto`` is resolved (bf16 on GPU, fp32 on CPU)."""

from __future__ import annotations

from typing import Literal

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def resolve_dtype(name: str, on_gpu: bool) -> str:
    """``auto`` becomes bfloat16 on a GPU and float32 on CPU; an explicit name stays."""
    if name == "auto":
        return "bfloat16" if on_gpu else "float32"
    return name


def torch_dtype(name: str, on_gpu: bool):
    """The ``torch.dtype`` for ``name`` (``auto`` resolved as above)."""
    import torch

    return getattr(torch, resolve_dtype(name, on_gpu))
