"""Log-likelihood of a continuation given a context, batched, in a Ray Data actor.

Tokenisation is lm-evaluation-harness's (``TemplateLM.loglikelihood`` / ``_encode_pair`` with
the ``hf`` model's ``tok_encode``): trailing whitespace of the context moves to the
continuation, the pair is encoded jointly (the tokenizer's own special tokens, none when the
text already starts with BOS) and the continuation is what the joint encoding adds beyond the
context's tokens; an empty context is the BOS (else EOS) token. Sequences longer than
``max_length`` lose tokens on the left; padding is on the right, so a causal model sees every
real token exactly as it would alone. Sequences whose inputs are identical (a context scored
against one-token choices: MMLU's letters) share one forward pass, as lm-eval's logits cache does.
A batch may instead carry token ids and continuation lengths (``ids``, ``n_tokens``): the windows
of a rolling log-likelihood, cut by the driver.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from platypus_ray.core.blocks import rows_only
from platypus_ray.core.collate import attention_mask, padded_width, right_pad


def encode_pair(
    tokenizer: Any, context: str, continuation: str, add_eos: bool = False, move_space: bool = True
) -> tuple[list[int], int]:
    """Token ids of context + continuation, and how many trailing ids are the continuation."""
    if move_space and context == "":
        return _encode_without_context(tokenizer, continuation)
    if move_space:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tok_encode(tokenizer, context)
    whole = tok_encode(tokenizer, context + continuation)
    continuation_ids = whole[len(context_ids) :]
    if add_eos and (not continuation_ids or continuation_ids[-1] != tokenizer.eos_token_id):
        continuation_ids = continuation_ids + [tokenizer.eos_token_id]
    return context_ids + continuation_ids, len(continuation_ids)


def tok_encode(tokenizer: Any, text: str) -> list[int]:
    """The tokenizer's default special tokens, except for text that already starts with BOS."""
    bos = tokenizer.decode(_prefix_id(tokenizer))
    return tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos)))


def _prefix_id(tokenizer: Any) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode_without_context(tokenizer: Any, continuation: str) -> tuple[list[int], int]:
    ids = tokenizer.encode(continuation, add_special_tokens=False)
    prefix = _prefix_id(tokenizer)
    if ids and ids[0] == prefix:
        return ids, len(ids) - 1
    return [prefix] + ids, len(ids)


def score_encoded(
    model: Any, encoded: list[tuple[list[int], int]], pad_id: int, max_length: int, device: str = "cpu"
) -> list[tuple[float, int, bool]]:
    """(summed log-prob, continuation tokens, continuation is the greedy choice) per sequence."""
    import torch

    trimmed = [(ids[-(max_length + 1) :], min(n, max_length)) for ids, n in encoded]
    unique: dict[tuple[int, ...], int] = {}  # model input -> its row in the forward batch
    rows = [unique.setdefault(tuple(ids[:-1]), len(unique)) for ids, _ in trimmed]
    inputs = list(unique)  # in row order: each key was added with the next row number
    width = padded_width([len(key) for key in inputs])
    input_ids = right_pad(inputs, pad_id, width)
    attention = attention_mask([len(key) for key in inputs], width)
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    results = []
    for row, (ids, n) in zip(rows, trimmed):
        if n == 0:
            results.append((0.0, 0, True))
            continue
        end = len(ids) - 1
        targets = torch.tensor(ids[-n:], device=logprobs.device)
        picked = logprobs[row, end - n : end].gather(-1, targets[:, None]).squeeze(-1)
        greedy = bool((logits[row, end - n : end].argmax(-1) == targets).all())
        results.append((float(picked.double().sum()), n, greedy))
    return results


SCORED_SCHEMA = pa.schema(
    [("request", pa.int64()), ("logprob", pa.float64()), ("n_tokens", pa.int64()), ("greedy", pa.bool_())]
)


class Scorer:
    """Ray Data callable class: one model replica per actor; a batch of requests in, scores out."""

    def __init__(self, name_or_path: str, adapter: str | None, dtype: str, device: str, max_length: int | None):
        from lm_eval.models.utils import resolve_max_length

        from platypus_ray.core.devices import actor_device
        from platypus_ray.core.dtypes import torch_dtype
        from platypus_ray.core.models import load_model

        device = actor_device(device)  # what this process sees: a simulated GPU computes on CPU
        self.tokenizer, self.model = load_model(name_or_path, adapter, torch_dtype(dtype, device == "cuda"), device)
        self.device = device
        self.max_length = max_length or resolve_max_length(self.model.config, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

    @rows_only(SCORED_SCHEMA)
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "ids" in batch:  # token windows already cut by the driver (rolling log-likelihoods)
            encoded = [(list(ids), int(n)) for ids, n in zip(batch["ids"], batch["n_tokens"])]
        else:
            encoded = [
                encode_pair(self.tokenizer, context, continuation, bool(add_eos), bool(move_space))
                for context, continuation, add_eos, move_space in zip(
                    batch["context"], batch["continuation"], batch["add_eos"], batch["move_space"]
                )
            ]
        scores = score_encoded(self.model, encoded, self.pad_id, self.max_length, self.device)
        return {
            "request": batch["request"],
            "logprob": np.array([s[0] for s in scores], dtype=np.float64),
            "n_tokens": np.array([s[1] for s in scores], dtype=np.int64),
            "greedy": np.array([s[2] for s in scores], dtype=bool),
        }
