"""``platypus-ray evaluate``: benchmark accuracy (acc, acc_norm) and held-out loss.

Requests (one per item and choice, one per validation row) are built in the driver, sorted
by length into batches, and scored by a Ray Data actor pool with one model replica per actor.
``acc`` picks the choice with the highest summed log-probability; ``acc_norm`` divides it by
the choice's length in characters first (lm-evaluation-harness's definitions).
"""

from __future__ import annotations

import json
import math
from collections import Counter
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from platypus_ray.batching import actor_pool_map, length_sorted_slices, resolve_device
from platypus_ray.benchmarks import load_benchmark
from platypus_ray.config import dump_config
from platypus_ray.evaluate.config import EvaluateConfig, InferenceSettings, ModelRef
from platypus_ray.evaluate.requests import Skipped, benchmark_requests, validation_requests
from platypus_ray.evaluate.scoring import Scorer
from platypus_ray.outputs import replaced_atomically
from platypus_ray.paths import absolute_if_local
from platypus_ray.runtime import init_ray


@dataclass
class EvaluateResult:
    output: Path
    summary_data: dict
    models: list[str]
    wall_s: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        models = self.models
        data = self.summary_data["models"]
        lines = [f"evaluate: {' vs '.join(models)} ({self.wall_s:.0f} s)"]
        benchmarks = [b for b in data[models[0]]["benchmarks"]]
        if benchmarks:
            columns = ["benchmark", "items", "shots"] + [f"{m} {k}" for m in models for k in ("acc", "acc_norm")]
            if len(models) > 1:
                columns.append("delta acc")
            rows = []
            for name in benchmarks:
                first = data[models[0]]["benchmarks"][name]
                row = [name, str(first["items"]), str(first["num_fewshot"])]
                for m in models:
                    b = data[m]["benchmarks"][name]
                    row += [f"{b['acc']:.3f} ±{b['acc_stderr']:.3f}", f"{b['acc_norm']:.3f}"]
                if len(models) > 1:
                    row.append(f"{data[models[0]]['benchmarks'][name]['acc'] - data[models[1]]['benchmarks'][name]['acc']:+.3f}")
                rows.append(row)
            widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
            lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        for m in models:
            v = data[m].get("validation")
            if v:
                lines.append(f"  validation {m}: loss {v['loss']:.4f} (perplexity {v['perplexity']:.2f}) over {v['rows']} rows, {v['tokens']} tokens")
        if self.skipped:
            lines.append("  skipped (unscorable items): " + ", ".join(f"{k} {v}" for k, v in self.skipped.items()))
        lines.append(f"  outputs: {self.output}/{{summary.json, items.parquet, validation.parquet}}")
        return "\n".join(lines)


def build_requests(cfg: EvaluateConfig) -> tuple[pa.Table, list[Skipped]]:
    """Every request, in a stable order, with a dense ``request`` index; runs before Ray starts,
    so a malformed benchmark row fails at once (naming its file and line)."""
    rows: list[dict] = []
    skipped: list[Skipped] = []
    for bench in cfg.benchmarks:
        items = load_benchmark(bench)
        pool = load_benchmark(bench, path=bench.fewshot_path) if bench.fewshot_path else None
        bench_rows, bench_skipped = benchmark_requests(bench, items, pool, cfg.seed)
        rows += bench_rows
        skipped += bench_skipped
    if cfg.validation is not None:
        rows += validation_requests(_read_rows(cfg.validation.path, cfg.validation.rows), cfg.validation.add_eos_token)
    table = pa.Table.from_pylist(rows)
    return table.append_column("request", pa.array(np.arange(len(table), dtype=np.int64))), skipped


def _read_rows(path: str, limit: int) -> list[dict]:
    import pyarrow.dataset as pads

    dataset = pads.dataset(path, format="parquet")
    return dataset.head(limit, columns=["instruction", "input", "output"]).to_pylist()


def score(table: pa.Table, model: ModelRef, inference: InferenceSettings, device: str) -> pd.DataFrame:
    """Scores of every request by ``model``, in request order."""
    lengths = _text_lengths(table)
    batches = length_sorted_slices(table.select(["request", "context", "continuation", "add_eos", "move_space"]),
                                   lengths, inference.batch_size)
    kwargs = {"name_or_path": absolute_if_local(model.name_or_path),
              "adapter": absolute_if_local(model.adapter) if model.adapter else None,
              "dtype": model.dtype, "device": device, "max_length": inference.max_length}
    scored = actor_pool_map(ray.data.from_arrow(batches), Scorer, kwargs, actors=inference.actors,
                            max_actors=len(batches), cpus_per_actor=inference.cpus_per_actor, device=device)
    n = len(table)
    out = {"logprob": np.full(n, np.nan), "n_tokens": np.zeros(n, dtype=np.int64), "greedy": np.zeros(n, dtype=bool)}
    seen = 0
    for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
        for column in out:
            out[column][batch["request"]] = batch[column]
        seen += len(batch["request"])
    assert seen == n, f"scored {seen} of {n} requests"
    return pd.DataFrame(out)


def _text_lengths(table: pa.Table) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.utf8_length(table["context"]).to_numpy() + pc.utf8_length(table["continuation"]).to_numpy()


def summarize(requests: pd.DataFrame, scores: pd.DataFrame, cfg: EvaluateConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Per-item results, per-row validation losses, and the per-benchmark summary of one model."""
    frame = pd.concat([requests.reset_index(drop=True), scores], axis=1)
    mc = frame[frame["benchmark"] != "validation"]
    items = []
    for (bench, item_id), group in mc.groupby(["benchmark", "item_id"], sort=False):
        group = group.sort_values("choice")
        logprobs = group["logprob"].to_numpy()
        normalised = logprobs / group["continuation"].str.len().to_numpy()
        answer = int(group["answer"].iloc[0])
        pred, pred_norm = int(np.argmax(logprobs)), int(np.argmax(normalised))
        items.append({"benchmark": bench, "item_id": item_id, "answer": answer, "pred": pred, "pred_norm": pred_norm,
                      "correct": pred == answer, "correct_norm": pred_norm == answer, "logprobs": logprobs.tolist()})
    items_frame = pd.DataFrame(items, columns=["benchmark", "item_id", "answer", "pred", "pred_norm", "correct",
                                               "correct_norm", "logprobs"])
    summary: dict = {"benchmarks": {}}
    for bench in cfg.benchmarks:
        name = bench.benchmark_name
        rows = items_frame[items_frame["benchmark"] == name]
        summary["benchmarks"][name] = {
            "items": len(rows), "num_fewshot": bench.num_fewshot,
            "acc": float(rows["correct"].mean()) if len(rows) else math.nan,
            "acc_stderr": _stderr(rows["correct"].to_numpy()),
            "acc_norm": float(rows["correct_norm"].mean()) if len(rows) else math.nan,
            "acc_norm_stderr": _stderr(rows["correct_norm"].to_numpy()),
        }
    validation = frame[frame["benchmark"] == "validation"][["item_id", "logprob", "n_tokens"]]
    if len(validation):
        tokens = int(validation["n_tokens"].sum())
        loss = float(-validation["logprob"].sum() / tokens)
        summary["validation"] = {"rows": len(validation), "tokens": tokens, "loss": loss, "perplexity": math.exp(loss)}
    return items_frame, validation.reset_index(drop=True), summary


def _stderr(values: np.ndarray) -> float:
    """Standard error of a mean of 0/1 outcomes (sample standard deviation / sqrt(n))."""
    return float(np.std(values.astype(float), ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def run(cfg: EvaluateConfig) -> EvaluateResult:
    start = time.perf_counter()
    cfg.check_output()
    table, skipped = build_requests(cfg)
    init_ray()
    device = resolve_device(cfg.inference.device)
    requests = table.drop_columns(["context"]).to_pandas()  # in request order: row i is request i
    models = [cfg.model] + ([cfg.compare_with] if cfg.compare_with is not None else [])
    summary: dict = {"models": {}, "requests": len(table), "device": device}
    item_frames, validation_frames = [], []
    for model in models:
        print(f"evaluate: scoring {len(table)} requests with {model.display_name} on {cfg.inference.actors} actor(s)", flush=True)
        items, validation, model_summary = summarize(requests, score(table, model, cfg.inference, device), cfg)
        item_frames.append(items.assign(model=model.display_name))
        validation_frames.append(validation.assign(model=model.display_name))
        summary["models"][model.display_name] = model_summary
    skipped_counts = dict(Counter(s.benchmark for s in skipped))
    summary["skipped"] = skipped_counts
    with replaced_atomically(cfg.output, "evaluate") as staging:
        pd.concat(item_frames).to_parquet(staging / "items.parquet", index=False)
        pd.concat(validation_frames).to_parquet(staging / "validation.parquet", index=False)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
        dump_config(cfg, staging / "config.yaml")
    return EvaluateResult(Path(cfg.output), summary, [m.display_name for m in models],
                          time.perf_counter() - start, skipped_counts)
