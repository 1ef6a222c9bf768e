"""Causal LMs on disk and in memory: the model- and adapter-folder checks, and loading a model with
its LoRA adapter (merge and evaluate load the same way). torch, transformers and peft are imported
inside the functions: importing this module stays cheap."""

from __future__ import annotations

import os
from typing import Any


def is_model_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(os.path.expanduser(path), "config.json"))


def model_problem(name_or_path: str) -> str | None:
    """What is wrong with a model reference, or None: a hub id passes; a local path must be a model
    folder (one with ``config.json``)."""
    looks_local = name_or_path.startswith((".", "/", "~")) or os.path.exists(name_or_path)
    if looks_local and not is_model_folder(name_or_path):
        return (
            f"'{name_or_path}' is not a model folder (no config.json); "
            "build one with `platypus-ray make-tiny-model --out DIR` or name a hub id"
        )
    return None


def adapter_problem(path: str) -> str | None:
    """What is wrong with a local LoRA adapter folder, or None: it must hold ``adapter_config.json``."""
    if not os.path.isfile(os.path.join(os.path.expanduser(path), "adapter_config.json")):
        return f"'{path}' is not a LoRA adapter folder (no adapter_config.json)"
    return None


def tokenizer_source(base: str, adapter: str | None) -> str:
    """The adapter's folder when training saved a tokenizer beside it, else the base's."""
    return adapter if adapter and os.path.isfile(os.path.join(adapter, "tokenizer_config.json")) else base


def load_model(
    name_or_path: str, adapter: str | None = None, dtype: Any = "auto", device: str = "cpu", merge: bool = True
) -> tuple[Any, Any]:
    """Tokenizer and eval-mode causal LM, with ``adapter`` (a LoRA folder) applied: merged into the
    weights when ``merge`` (inference needs no LoRA branch), else the :class:`peft.PeftModel`.
    ``dtype``: a ``torch.dtype``, or ``"auto"`` for the dtype the weights were saved in (each
    stage resolves its own ``auto`` first: see ``core/dtypes.py``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(name_or_path, adapter))
    loaded = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    model = loaded.to(device)  # type: ignore[arg-type]  # typeshed: a wraps()'d .to binds no self
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return tokenizer, model
