"""``generate_until`` requests, batched, in a Ray Data actor: the text lm-eval's ``hf`` model returns.

Each step is lm-eval's own (``HFLM.generate_until``), called through its helpers where it has
them: the task's ``generation_kwargs`` normalised by ``normalize_gen_kwargs`` (greedy unless they
ask to sample; ``max_gen_toks``, else 256), the EOS text added to the ``until`` stop strings,
contexts encoded as one left-padded batch (special tokens unless the first context already
starts with BOS) and left-truncated to leave room for ``max_gen_toks``, ``generate`` stopped by
lm-eval's stop-string criteria (a batch stops when every row has met one), and each row's new
tokens decoded without special tokens and cut at the first stop string. One deadline per batch
(``inference.timeout_s``) stops a generation that runs too long; the batch then reports an
error naming its requests instead of text.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa

from platypus_ray.core.blocks import rows_only

DEFAULT_MAX_GEN_TOKS = 256  # HFLM.max_gen_toks: the length when a task sets none


def gen_key(gen_kwargs: dict) -> str:
    """A request's generation kwargs as one string: lm-eval batches only requests whose kwargs are equal."""
    return json.dumps(gen_kwargs, sort_keys=True, default=str)


def generation_plan(gen_kwargs: dict, eos_text: str, max_length: int) -> tuple[dict, list[str], int, int]:
    """(kwargs for ``generate``, stop strings, max new tokens, max context tokens) as lm-eval derives them."""
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    kwargs: dict[str, Any] = dict(normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS))
    until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
    max_gen_toks = int(kwargs.pop("max_gen_toks"))
    if max_gen_toks >= max_length:
        raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a context in {max_length} tokens")
    # HFLM._model_generate: temperature 0 means greedy; a greedy call gets no temperature at all
    kwargs["temperature"] = kwargs.get("temperature", 0.0)
    if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
        kwargs["do_sample"] = False
    if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
        kwargs.pop("temperature")
    return kwargs, until, max_gen_toks, max_length - max_gen_toks


def special_tokens(tokenizer: Any, context: str) -> dict:
    """The tokenizer's special tokens, except for a context that already starts with BOS (a chat template's)."""
    from lm_eval.models.utils import has_bos_prefix

    return {"add_special_tokens": False} if has_bos_prefix(context, tokenizer.bos_token) else {}


def encode_left_padded(tokenizer: Any, contexts: list[str], max_context: int) -> tuple[Any, Any]:
    """Input ids and attention mask, padded on the left and left-truncated to ``max_context``."""
    special = special_tokens(tokenizer, contexts[0])  # HFLM decides once per batch, by its first context
    encoding = tokenizer(contexts, padding="longest", padding_side="left", return_tensors="pt", **special)
    return encoding["input_ids"][:, -max_context:], encoding["attention_mask"][:, -max_context:]


def generate_texts(
    model: Any,
    tokenizer: Any,
    contexts: list[str],
    gen_kwargs: dict,
    max_length: int,
    device: str = "cpu",
    timeout_s: float | None = None,
) -> list[str]:
    """The generated text of every context (one batch, all with ``gen_kwargs``), stop strings cut off."""
    import torch
    from lm_eval.models.utils import postprocess_generated_text
    from lm_eval.models.utils_hf import stop_sequences_criteria

    eos_text = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False)
    kwargs, until, max_gen_toks, max_context = generation_plan(gen_kwargs, eos_text, max_length)
    input_ids, attention = encode_left_padded(tokenizer, contexts, max_context)
    width = input_ids.shape[1]
    criteria = stop_sequences_criteria(tokenizer, until, width, len(contexts))
    deadline = _Deadline(timeout_s)
    criteria.append(deadline)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_length=kwargs.pop("max_length", width + max_gen_toks),
            stopping_criteria=criteria,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **kwargs,
        )
    if deadline.expired:
        raise TimeoutError(f"generation ran past {timeout_s:.0f} s (inference.timeout_s)")
    return [
        postprocess_generated_text(tokenizer.decode(row[width:], skip_special_tokens=True), until, None)
        for row in out.tolist()
    ]


class _Deadline:
    """A stopping criterion that ends generation once ``timeout_s`` has passed, and remembers it did."""

    def __init__(self, timeout_s: float | None) -> None:
        self.end = None if timeout_s is None else time.monotonic() + timeout_s
        self.expired = False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.expired = self.end is not None and time.monotonic() > self.end
        return torch.full((input_ids.shape[0],), self.expired, dtype=torch.bool, device=input_ids.device)


GENERATED_SCHEMA = pa.schema([("request", pa.int64()), ("text", pa.string()), ("error", pa.string())])


class Generator:
    """Ray Data callable class: one model replica per actor; a batch of requests (equal generation
    kwargs) in, generated texts out; an error (the batch's failure) instead of texts when it fails."""

    def __init__(
        self,
        name_or_path: str,
        adapter: str | None,
        dtype: str,
        device: str,
        max_length: int | None,
        timeout_s: float,
        seed: int,
    ):
        import torch
        from lm_eval.models.utils import configure_pad_token, resolve_max_length

        from platypus_ray.core.devices import actor_device
        from platypus_ray.core.dtypes import torch_dtype
        from platypus_ray.core.models import load_model

        device = actor_device(device)
        self.tokenizer, self.model = load_model(name_or_path, adapter, torch_dtype(dtype, device == "cuda"), device)
        self.tokenizer = configure_pad_token(self.tokenizer, model_config=self.model.config)
        self.device, self.timeout_s = device, timeout_s
        self.max_length = max_length or resolve_max_length(self.model.config, self.tokenizer)
        torch.manual_seed(seed)  # only sampling tasks draw from it

    @rows_only(GENERATED_SCHEMA)
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        contexts = [str(c) for c in batch["context"]]
        try:
            texts = generate_texts(
                self.model,
                self.tokenizer,
                contexts,
                json.loads(str(batch["gen_kwargs"][0])),
                self.max_length,
                self.device,
                self.timeout_s,
            )
            errors = [""] * len(contexts)
        except Exception as exc:  # noqa: BLE001 - reported per request by the driver, which names task and doc
            texts, errors = [""] * len(contexts), [f"{type(exc).__name__}: {exc}"] * len(contexts)
        return {
            "request": batch["request"],
            "text": np.array(texts, dtype=object),
            "error": np.array(errors, dtype=object),
        }
