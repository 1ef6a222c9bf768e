"""``platypus-ray evaluate``: lm-evaluation-harness tasks scored on Ray Data, and held-out loss.

Before Ray starts, the benchmark entries become lm-eval task objects (:mod:`.tasks`), so an
unknown task or data that cannot be loaded offline fails at once. Then, per model, lm-eval's
own evaluation loop runs with the Ray Data actor pool as its model (:mod:`.harness`, :mod:`.pool`):
every request (plus the held-out rows) is sorted by length into batches and scored or generated
by one model replica per actor, and the filters, per-item results and aggregates are the tasks'
own, so the numbers are the ones ``lm_eval`` prints.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from platypus_ray.core.config import dump_config
from platypus_ray.core.devices import resolve_device
from platypus_ray.core.errors import UserError
from platypus_ray.core.outputs import replaced_atomically
from platypus_ray.core.runtime import init_ray
from platypus_ray.core.stage import Input, Output, Stage
from platypus_ray.evaluate.config import EvaluateConfig, ModelRef
from platypus_ray.evaluate.engines import choose_engine, vllm_installed
from platypus_ray.evaluate.harness import entry_metrics, evaluate_tasks, item_rows, pool_lm, write_samples
from platypus_ray.evaluate.pool import generate, load_tokenizer, score, score_rolling
from platypus_ray.evaluate.report import EvaluateResult
from platypus_ray.evaluate.requests import validation_requests
from platypus_ray.evaluate.tasks import LoadedTasks, load_tasks

logger = logging.getLogger(__name__)

__all__ = ["STAGE", "EvaluateResult", "run", "score"]


def _validation_rows(cfg: EvaluateConfig) -> pd.DataFrame | None:
    if cfg.validation is None:
        return None
    import pyarrow.dataset as pads

    dataset = pads.dataset(cfg.validation.path, format="parquet")
    if "messages" in dataset.schema.names:  # refine's kept/ of conversations
        raise UserError(
            f"evaluate.validation: '{cfg.validation.path}' holds conversations (a messages column); the held-out "
            "loss is built with the Alpaca prompt, so it takes Alpaca rows only: drop evaluate.validation (the train "
            "run's eval_loss already scores held-out conversations with their chat template)"
        )
    rows = dataset.head(cfg.validation.rows, columns=["instruction", "input", "output"]).to_pylist()
    return pd.DataFrame(validation_requests(rows, cfg.validation.add_eos_token))


def _validation_summary(rows: pd.DataFrame, scores: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    frame = pd.concat([rows[["item_id"]].reset_index(drop=True), scores[["logprob", "n_tokens"]]], axis=1)
    tokens = int(frame["n_tokens"].sum())
    loss = float(-frame["logprob"].sum() / tokens)
    return frame, {"rows": len(frame), "tokens": tokens, "loss": loss, "perplexity": math.exp(loss)}


def _evaluate_model(
    model: ModelRef,
    cfg: EvaluateConfig,
    loaded: LoadedTasks | None,
    validation: pd.DataFrame | None,
    device: str,
    engine: str = "transformers",
) -> tuple[dict | None, pd.DataFrame | None, dict]:
    """lm-eval's results (or None without benchmarks), validation scores, and this model's summary;
    ``engine`` generates (``transformers`` or ``vllm``), the transformers pool scores."""

    def score_fn(rows: pd.DataFrame) -> pd.DataFrame:
        return score(rows, model, cfg.inference, device)

    summary: dict[str, Any]
    results, summary, validation_scores = None, {"benchmarks": {}}, None
    if loaded is not None:
        tokenizer = load_tokenizer(model)
        if cfg.prompt.apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserError(
                f"evaluate.prompt.apply_chat_template: {model.display_name}'s tokenizer ({model.name_or_path}) has "
                "no chat template; evaluate it without the template, or give a model whose tokenizer carries one"
            )

        def generate_fn(rows: pd.DataFrame) -> list[str]:
            if engine == "vllm":
                from platypus_ray.evaluate.vllm_generation import generate_vllm

                return generate_vllm(rows, model, cfg.inference, tokenizer, cfg.seed)
            return generate(rows, model, cfg.inference, device, tokenizer, cfg.seed)

        def rolling_fn(texts: list[str]) -> list[float]:
            return score_rolling(texts, model, cfg.inference, device, tokenizer)

        lm = pool_lm(score_fn, generate_fn, rolling_fn, tokenizer, extra=validation)
        results = evaluate_tasks(loaded, lm, cfg.limit, cfg.prompt)
        summary["benchmarks"] = entry_metrics(results, loaded)
        validation_scores = lm.extra_scores
    if validation is not None and validation_scores is None:  # no log-likelihood pass carried them
        validation_scores = score_fn(validation)
    frame = None
    if validation is not None:
        frame, summary["validation"] = _validation_summary(validation, validation_scores)
    return results, frame, summary


class LoadedEntries:
    """The benchmark entries as lm-eval task objects, built in preflight (an unknown task or data
    that cannot be loaded offline fails before Ray starts), in a folder that lives until the
    evaluation ends. Each model after the first gets fresh task objects: a task's random
    few-shot sampler is a stream, seeded once."""

    def __init__(self, cfg: EvaluateConfig) -> None:
        self._cfg = cfg
        self._folder = tempfile.TemporaryDirectory(prefix="platypus-eval-tasks-")
        self.first = self.load()

    def load(self) -> LoadedTasks | None:
        if not self._cfg.benchmarks:
            return None
        return load_tasks(self._cfg.benchmarks, self._cfg.seed, Path(self._folder.name))

    def close(self) -> None:
        self._folder.cleanup()


class EvaluateStage(Stage[EvaluateConfig, LoadedEntries, EvaluateResult]):
    """Models, benchmark files or lm-eval tasks, held-out rows in; ``output`` (summary, items, samples) out."""

    name = "evaluate"
    config = EvaluateConfig

    def inputs(self, cfg: EvaluateConfig) -> list[Input]:
        return cfg.inputs()

    def outputs(self, cfg: EvaluateConfig) -> list[Output]:
        return [Output("output", cfg.output)]

    def check(self, cfg: EvaluateConfig, planned: frozenset[str]) -> LoadedEntries:
        if cfg.inference.engine == "vllm":  # before Ray starts; an `auto` device is checked once resolved
            choose_engine("vllm", cfg.inference.device, vllm_installed(), _models(cfg))
        return LoadedEntries(cfg)

    def execute(self, cfg: EvaluateConfig, checked: LoadedEntries) -> EvaluateResult:
        try:
            return _evaluate(cfg, checked)
        finally:
            checked.close()


def _models(cfg: EvaluateConfig) -> list[ModelRef]:
    return [cfg.model] + ([cfg.compare_with] if cfg.compare_with is not None else [])


STAGE = EvaluateStage()
run = STAGE.run


def _evaluate(cfg: EvaluateConfig, entries: LoadedEntries) -> EvaluateResult:
    start = time.perf_counter()
    loaded = entries.first
    validation = _validation_rows(cfg)
    init_ray()
    device = resolve_device(cfg.inference.device)
    models = _models(cfg)
    engine = choose_engine(cfg.inference.engine, device, vllm_installed(), models)
    summary: dict = {"models": {}, "device": device, "generation_engine": engine, "limit": cfg.limit, "seed": cfg.seed}
    item_frames, validation_frames, all_results = [], [], {}
    for index, model in enumerate(models):
        logger.info("evaluate: scoring with %s on %d actor(s)", model.display_name, cfg.inference.actors)
        tasks = loaded if index == 0 else entries.load()
        results, validation_frame, summary["models"][model.display_name] = _evaluate_model(
            model, cfg, tasks, validation, device, engine
        )
        if results is not None and tasks is not None:  # results come only from loaded tasks
            item_frames.append(item_rows(results, tasks).assign(model=model.display_name))
            all_results[model.display_name] = results
        if validation_frame is not None:
            validation_frames.append(validation_frame.assign(model=model.display_name))
    skipped = {name: len(ids) for name, ids in (loaded.skipped if loaded else {}).items()}
    summary["skipped"] = skipped
    with replaced_atomically(cfg.output, "evaluate") as staging:
        if item_frames:
            pd.concat(item_frames, ignore_index=True).to_parquet(staging / "items.parquet", index=False)
        if validation_frames:
            pd.concat(validation_frames, ignore_index=True).to_parquet(staging / "validation.parquet", index=False)
        for label, results in all_results.items():
            write_samples(results, staging / "samples" / label)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        dump_config(cfg, staging / "config.yaml")
    return EvaluateResult(
        Path(cfg.output), summary, [m.display_name for m in models], time.perf_counter() - start, skipped
    )
