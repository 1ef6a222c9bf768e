"""``generate_until`` requests through vLLM: Ray Data LLM's processor (``ray.data.llm``) on GPU nodes.

The same requests as the transformers path (:mod:`.generation`) and the same outputs, step by step:

* **Sampling** as lm-eval's ``vllm`` model maps a task's ``generation_kwargs`` (``normalize_gen_kwargs``,
  ``do_sample`` dropped: vLLM samples by temperature alone), greedy (temperature 0) unless the task
  asks to sample, ``max_tokens`` = ``max_gen_toks``, ``stop`` = the ``until`` list of
  ``handle_stop_sequences`` (the EOS text added).
* **Prompts** are the strings lm-eval built (its chat template already applied, or none): the
  processor's own chat-template and tokenize stages are off, and the driver encodes each context
  by the transformers path's own rule (:func:`.generation.special_tokens`: special tokens unless it
  starts with BOS; left-truncated to leave room for ``max_gen_toks``), so both engines see the same
  token ids.
* **Text** is the new tokens decoded as HFLM decodes them (Ray's detokenize stage: ``batch_decode``
  without special tokens; lm-eval's ``vllm`` model keeps them, which would make the two engines
  differ), then cut at the first stop string by lm-eval's ``postprocess_generated_text``.
* **Order**: each row carries its request index; results land at that index, whatever order Ray
  Data returns them in. A failed request comes back as a row with its error (not a crash), which
  the driver reports naming task and document, as the transformers path does.

The driver waits a bounded time per batch (``inference.timeout_s``, :func:`.pool.bounded_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import ray

from platypus_ray.core.dtypes import resolve_dtype
from platypus_ray.core.paths import absolute_if_local
from platypus_ray.evaluate.config import InferenceSettings, ModelRef
from platypus_ray.evaluate.generation import DEFAULT_MAX_GEN_TOKS, special_tokens
from platypus_ray.evaluate.pool import bounded_batches, collect_texts, context_length, finished_texts

ERROR_COLUMN = "__inference_error__"  # Ray Data LLM's column of a failed row (should_continue_on_error)


def sampling_plan(gen_kwargs: dict, eos_text: str, max_length: int) -> tuple[dict, list[str], int]:
    """(vLLM ``SamplingParams`` kwargs, stop strings, max context tokens) of one request."""
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    kwargs: dict[str, Any] = dict(normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS))
    until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
    max_gen_toks = int(kwargs.pop("max_gen_toks"))
    if max_gen_toks >= max_length:
        raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a context in {max_length} tokens")
    sample = bool(kwargs.pop("do_sample", False))
    # greedy unless the task samples: vLLM's own default temperature (1.0) would sample
    kwargs["temperature"] = float(kwargs.get("temperature", 0.0)) if sample else 0.0
    params = kwargs | {"max_tokens": max_gen_toks, "stop": list(until), "skip_special_tokens": True}
    return params, until, max_length - max_gen_toks


def request_rows(rows: pd.DataFrame, tokenizer: Any, max_length: int) -> list[dict]:
    """One processor row per request (``context``, ``gen_kwargs`` dict): its index, its token ids
    (encoded as the transformers path encodes them), its sampling params and stop strings."""
    eos_text = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False)  # as generate_texts
    out = []
    for request, (context, gen_kwargs) in enumerate(zip(rows["context"], rows["gen_kwargs"])):
        params, until, max_context = sampling_plan(gen_kwargs, eos_text, max_length)
        # unpadded: the driver's tokenizer may have no pad token (the actors' get one from lm-eval)
        ids = tokenizer(str(context), **special_tokens(tokenizer, str(context)))["input_ids"][-max_context:]
        out.append({"request": request, "tokenized_prompt": list(ids), "sampling_params": params, "until": until})
    return out


def output_text(row: dict) -> dict:
    """The processor's postprocess (a row that generated): its text cut at the first stop string."""
    from lm_eval.models.utils import postprocess_generated_text

    until = [str(s) for s in row["until"]]
    return {"request": int(row["request"]), "text": postprocess_generated_text(str(row["generated_text"]), until, None)}


def outcome(row: dict) -> dict:
    """Every output row as (request, text, error): failed rows skip the postprocess and keep
    their input columns, so the columns are made uniform here."""
    error = str(row.get(ERROR_COLUMN) or "")
    return {"request": int(row["request"]), "text": "" if error else str(row.get("text") or ""), "error": error}


def same_params_groups(requests: list[dict]) -> list[list[dict]]:
    """``requests`` grouped by the keys of their sampling params: a Ray Data batch mixing key sets
    fills the missing ones with None, which vLLM's ``SamplingParams`` refuses."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for request in requests:
        groups.setdefault(tuple(sorted(request["sampling_params"])), []).append(request)
    return list(groups.values())


def processor_config(model: ModelRef, inference: InferenceSettings, max_length: int, seed: int) -> Any:
    """Ray Data LLM's ``vLLMEngineProcessorConfig`` for ``model`` with this config's engine settings."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=absolute_if_local(model.name_or_path),
        engine_kwargs={
            "tensor_parallel_size": inference.vllm.tensor_parallel_size,
            "gpu_memory_utilization": inference.vllm.gpu_memory_utilization,
            "max_model_len": max_length,
            "dtype": resolve_dtype(model.dtype, on_gpu=True),  # auto: bf16, as the transformers path on GPU
            "seed": seed,  # only sampling tasks draw from it
        },
        batch_size=inference.batch_size,
        concurrency=inference.actors,
        chat_template_stage=False,  # lm-eval rendered the template (or chose none)
        tokenize_stage=False,  # the driver sends token ids (request_rows)
        detokenize_stage=True,  # decode as HFLM: batch_decode(skip_special_tokens=True)
        should_continue_on_error=True,  # a failed request is a row naming its error
        log_engine_metrics=False,  # needs a Prometheus port this project does not open
    )


def generate_vllm(
    rows: pd.DataFrame, model: ModelRef, inference: InferenceSettings, tokenizer: Any, seed: int
) -> list[str]:
    """The generated text of every request row (``context``, ``gen_kwargs`` dict, ``task``,
    ``doc_id``) by vLLM, in row order; the first failed request raises, naming its task and document."""
    from ray.data.llm import build_processor

    max_length = context_length(model, inference, tokenizer)
    config = processor_config(model, inference, max_length, seed)
    texts: list[str | None] = [None] * len(rows)
    for group in same_params_groups(request_rows(rows, tokenizer, max_length)):
        processor = build_processor(config, postprocess=output_text)
        collect_texts(_outcomes(processor(ray.data.from_items(group)), inference.timeout_s), rows, texts)
    return finished_texts(texts)


def _outcomes(ds: ray.data.Dataset, timeout_s: float) -> Iterator[dict]:
    return bounded_batches(ds.map(outcome), timeout_s)
