"""The Ray Data actor pool that serves lm-eval's requests: rows in, results out in row order.

Requests are sorted by length into batches, one block per batch, and mapped by one model replica
per actor (:class:`.scoring.Scorer` for log-likelihoods, rolling ones too, :class:`.generation.Generator`
for generation). Generation batches are cut as lm-eval's ``hf`` model cuts them (equal generation
kwargs, longest context in tokens first, ties by text), so a batch holds the same contexts and
the same left padding on both sides. The driver waits a bounded time for each batch: the actors'
own per-batch deadline (``inference.timeout_s``) plus a margin (for the first batch, the time to
start the actors and load the model).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from platypus_ray.core.batching import actor_pool_map, length_sorted_slices
from platypus_ray.core.blocks import batches as nonempty_batches
from platypus_ray.core.errors import UserError, require
from platypus_ray.core.models import tokenizer_source
from platypus_ray.core.paths import absolute_if_local
from platypus_ray.evaluate.config import InferenceSettings, ModelRef
from platypus_ray.evaluate.generation import Generator, gen_key
from platypus_ray.evaluate.scoring import Scorer, tok_encode

_LOAD_MARGIN_S = 1800.0  # starting the actors and loading the model before the first batch
_BATCH_MARGIN_S = 120.0  # Ray Data's scheduling between batches
_REQUEST_COLUMNS = ["context", "continuation", "add_eos", "move_space"]


class GenerationError(UserError):
    """A generation request failed (it ran past the per-batch timeout, or the model raised)."""


def load_tokenizer(model: ModelRef) -> Any:
    """The tokenizer the actors load with ``model``: the driver's, for chat templates and batch order."""
    from transformers import AutoTokenizer

    adapter = absolute_if_local(model.adapter) if model.adapter else None
    return AutoTokenizer.from_pretrained(tokenizer_source(absolute_if_local(model.name_or_path), adapter))


def _model_kwargs(model: ModelRef, inference: InferenceSettings, device: str) -> dict:
    return {
        "name_or_path": absolute_if_local(model.name_or_path),
        "adapter": absolute_if_local(model.adapter) if model.adapter else None,
        "dtype": model.dtype,
        "device": device,
        "max_length": inference.max_length,
    }


def context_length(model: ModelRef, inference: InferenceSettings, tokenizer: Any) -> int:
    """Tokens per sequence: ``inference.max_length``, else the model's context as lm-eval reads it."""
    from lm_eval.models.utils import resolve_max_length
    from transformers import AutoConfig

    if inference.max_length:
        return inference.max_length
    return resolve_max_length(AutoConfig.from_pretrained(absolute_if_local(model.name_or_path)), tokenizer)


def score(rows: pd.DataFrame, model: ModelRef, inference: InferenceSettings, device: str) -> pd.DataFrame:
    """``logprob``, ``n_tokens``, ``greedy`` of every request row by ``model``, in row order."""
    table = pa.Table.from_pandas(rows[_REQUEST_COLUMNS].reset_index(drop=True), preserve_index=False)
    lengths = rows["context"].str.len().to_numpy() + rows["continuation"].str.len().to_numpy()
    return _score_table(table, lengths, model, inference, device)


def score_rolling(
    texts: list[str], model: ModelRef, inference: InferenceSettings, device: str, tokenizer: Any
) -> list[float]:
    """Each text's summed log-likelihood, token by token (lm-eval's ``loglikelihood_rolling``): the
    text's tokens cut into disjoint windows of the model's context, each window scored given the
    one before it (the first given the BOS token), the windows' sums added."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    max_length = context_length(model, inference, tokenizer)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids, n_tokens, owner = [], [], []
    for i, text in enumerate(texts):
        windows = get_rolling_token_windows(tok_encode(tokenizer, text), prefix, max_length, context_len=1)
        for context, continuation in map(make_disjoint_window, windows):
            ids.append(context + continuation)
            n_tokens.append(len(continuation))
            owner.append(i)
    if not ids:
        return [0.0] * len(texts)
    table = pa.table({"ids": pa.array(ids, pa.list_(pa.int64())), "n_tokens": pa.array(n_tokens, pa.int64())})
    scores = _score_table(table, np.array([len(x) for x in ids]), model, inference, device)
    return np.bincount(owner, weights=scores["logprob"].to_numpy(), minlength=len(texts)).tolist()


def _score_table(
    table: pa.Table, lengths: np.ndarray, model: ModelRef, inference: InferenceSettings, device: str
) -> pd.DataFrame:
    table = table.append_column("request", pa.array(np.arange(len(table), dtype=np.int64)))
    blocks = length_sorted_slices(table, lengths, inference.batch_size)
    scored = actor_pool_map(
        ray.data.from_arrow(blocks),
        Scorer,
        _model_kwargs(model, inference, device),
        actors=inference.actors,
        max_actors=len(blocks),
        cpus_per_actor=inference.cpus_per_actor,
        device=device,
    )
    n = len(table)
    out = {"logprob": np.full(n, np.nan), "n_tokens": np.zeros(n, dtype=np.int64), "greedy": np.zeros(n, dtype=bool)}
    seen = 0
    for batch in bounded_batches(scored, inference.timeout_s):
        for column in out:
            out[column][batch["request"]] = batch[column]
        seen += len(batch["request"])
    require(seen == n, f"scored {seen} of {n} requests: Ray Data lost or repeated a batch")
    return pd.DataFrame(out)


def generation_blocks(rows: pd.DataFrame, tokenizer: Any, batch_size: int) -> list[pa.Table]:
    """``rows`` (context, gen_kwargs, task, doc_id) as batches: equal kwargs together, each group
    longest context (in tokens) first, ties by text, as lm-eval's ``hf`` model orders them."""
    frame = rows[["context", "task", "doc_id"]].reset_index(drop=True).copy()
    frame["gen_kwargs"] = [gen_key(k) for k in rows["gen_kwargs"]]
    frame["request"] = np.arange(len(frame), dtype=np.int64)
    frame["_tokens"] = [-len(tok_encode(tokenizer, c)) for c in frame["context"]]
    blocks = []
    for _, group in frame.groupby("gen_kwargs", sort=False):
        group = group.sort_values(["_tokens", "context"], kind="stable").drop(columns="_tokens")
        table = pa.Table.from_pandas(group, preserve_index=False)
        blocks += [table.slice(start, batch_size) for start in range(0, len(table), batch_size)]
    return blocks


def generate(
    rows: pd.DataFrame, model: ModelRef, inference: InferenceSettings, device: str, tokenizer: Any, seed: int
) -> list[str]:
    """The generated text of every request row (``context``, ``gen_kwargs`` dict, ``task``,
    ``doc_id``), in row order; the first failed request raises, naming its task and document."""
    blocks = generation_blocks(rows, tokenizer, inference.batch_size)
    kwargs = _model_kwargs(model, inference, device) | {"timeout_s": inference.timeout_s, "seed": seed}
    generated = actor_pool_map(
        ray.data.from_arrow(blocks),
        Generator,
        kwargs,
        actors=inference.actors,
        max_actors=len(blocks),
        cpus_per_actor=inference.cpus_per_actor,
        device=device,
    )
    texts: list[str | None] = [None] * len(rows)
    collect_texts(bounded_batches(generated, inference.timeout_s), rows, texts)
    return finished_texts(texts)


def collect_texts(batches: Iterator[dict], rows: pd.DataFrame, texts: list[str | None]) -> None:
    """Each batch's ``text`` into ``texts`` at its ``request`` index; a batch ``error`` raises a
    :class:`GenerationError` naming the request's task, document and the end of its context."""
    for batch in batches:
        for request, text, error in zip(batch["request"], batch["text"], batch["error"]):
            if error:
                row = rows.iloc[int(request)]
                raise GenerationError(
                    f"generation failed for task '{row['task']}', doc {row['doc_id']} "
                    f"(request {int(request)}, context {str(row['context'])[-60:]!r}): {error}"
                )
            texts[int(request)] = str(text)


def finished_texts(texts: list[str | None]) -> list[str]:
    """``texts`` once every request has one (else an invariant error: a batch was lost)."""
    missing = [i for i, t in enumerate(texts) if t is None]
    require(not missing, f"generated {len(texts) - len(missing)} of {len(texts)} requests: Ray Data lost a batch")
    return [str(t) for t in texts]


def bounded_batches(ds: ray.data.Dataset, timeout_s: float) -> Iterator[dict]:
    """``ds``'s batches (numpy), each waited for at most ``timeout_s`` plus a margin (the first
    plus the model load); past that, a :class:`UserError` naming ``inference.timeout_s``."""
    results: queue.Queue = queue.Queue(maxsize=2)
    done = object()
    stop = threading.Event()  # the consumer left (an error, the bound): the pump closes the executor

    def hand_over(item: object) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=1.0)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        batches = nonempty_batches(ds, "numpy")
        try:
            for batch in batches:
                if not hand_over(batch):
                    return
            hand_over(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver thread, which raises it
            hand_over(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # shuts Ray Data's executor down: its actors release their CPUs/GPUs

    threading.Thread(target=pump, daemon=True, name="evaluate-batches").start()
    wait = timeout_s + _LOAD_MARGIN_S
    try:
        while True:
            try:
                item = results.get(timeout=wait)
            except queue.Empty:
                raise UserError(
                    f"evaluate: no batch of requests finished within {wait:.0f} s (inference.timeout_s "
                    f"{timeout_s:.0f}); the cluster may lack free CPUs/GPUs for the actors, or raise the bound"
                ) from None
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            wait = timeout_s + _BATCH_MARGIN_S
    finally:
        stop.set()
