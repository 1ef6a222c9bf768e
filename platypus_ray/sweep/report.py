"""Sweep outputs: ranked ``results.csv`` + markdown table, ``eval_loss.png``, ``best-train.yaml``."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, field

import yaml

from platypus_ray.paths import is_file, write_bytes, write_text
from platypus_ray.sweep.config import SweepConfig
from platypus_ray.train.worker import CHECKPOINT_SUBDIR

RESULT_COLUMNS = ["rank", "trial", "lora_r", "target_modules", "learning_rate", "metric", "best_metric",
                  "rounds", "step", "status", "adapter"]


@dataclass
class TrialRow:
    """One trial: its parameters, last and best metric, how far it got, its adapter if it finished."""

    trial: str
    lora_r: int
    target_modules: str
    learning_rate: float
    metric: float | None
    best_metric: float | None
    rounds: int
    step: int | None
    status: str
    adapter: str = ""
    rank: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)


def collect_rows(grid, cfg: SweepConfig, total_steps: int) -> list[TrialRow]:
    """Rows from Tune's ResultGrid, ranked by the last reported metric (trials without one last).

    A trial's adapter is the one in its last checkpoint: Tune stops a trial as soon as it
    reports round ``max_t`` (or loses an ASHA rung), so the trial never gets past ``fit``."""
    rows = []
    for result in grid:
        params = result.config or {}
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or os.path.basename(result.path or "?")
        frame = result.metrics_dataframe
        history: list[tuple[int, float]] = []
        if frame is not None and cfg.sweep.metric in frame:
            clean = frame.dropna(subset=[cfg.sweep.metric])
            history = [(int(s), float(v)) for s, v in zip(clean.get("step", clean.index), clean[cfg.sweep.metric])]
        value = metrics.get(cfg.sweep.metric)
        adapter = f"{metrics.get('checkpoint_path', '')}/{CHECKPOINT_SUBDIR}"
        if not is_file(f"{adapter}/adapter_model.safetensors"):
            adapter = ""
        if result.error is not None:
            status = f"error: {str(result.error).splitlines()[0][:120]}"
        elif value is None:
            status = f"no {cfg.sweep.metric} reported"
        elif (metrics.get("step") or 0) >= total_steps:
            status = "completed"
        else:
            status = f"stopped early at step {metrics.get('step')}"
        target = params.get("target_modules", cfg.lora.target_modules)
        rows.append(
            TrialRow(
                trial=str(trial_id),
                lora_r=params.get("lora_r", cfg.lora.r),
                target_modules=target if isinstance(target, str) else ",".join(target),
                learning_rate=params.get("learning_rate", cfg.training.learning_rate),
                metric=None if value is None else float(value),
                best_metric=_best([v for _, v in history], cfg.sweep.mode),
                rounds=int(metrics.get("training_iteration", len(history)) or 0),
                step=metrics.get("step"),
                status=status,
                adapter=adapter,
                history=history,
            )
        )
    sign = 1 if cfg.sweep.mode == "min" else -1
    rows.sort(key=lambda r: (r.metric is None, sign * r.metric if r.metric is not None else 0.0, r.trial))
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
    return rows


def markdown_table(rows: list[TrialRow], metric: str) -> str:
    header = f"| rank | trial | lora_r | target_modules | learning_rate | {metric} | best | rounds | status |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        value = "-" if r.metric is None else f"{r.metric:.4f}"
        best = "-" if r.best_metric is None else f"{r.best_metric:.4f}"
        lines.append(f"| {r.rank} | {r.trial} | {r.lora_r} | {r.target_modules} | {r.learning_rate:g} | {value} | {best} "
                     f"| {r.rounds} | {r.status} |")
    return "\n".join(lines)


def write_outputs(rows: list[TrialRow], cfg: SweepConfig, sweep_dir: str) -> tuple[dict[str, str], str, str, str | None]:
    """results.csv, eval_loss.png, best-train.yaml; returns (files, table, best config path, best adapter)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    for row in rows:
        record = asdict(row)
        writer.writerow({k: record[k] for k in RESULT_COLUMNS})
    files = {"results": f"{sweep_dir}/results.csv", "plot": f"{sweep_dir}/{cfg.sweep.metric}.png"}
    write_text(files["results"], buffer.getvalue())
    _plot(rows, cfg.sweep.metric, files["plot"])

    best = rows[0]
    best_cfg = cfg.train_config(best.lora_r, _targets(best.target_modules), best.learning_rate,
                                f"{cfg.run.name}-best", cfg.run.storage_path)
    best_path = f"{sweep_dir}/best-train.yaml"
    header = (f"# Best trial of sweep '{cfg.run.name}' ({best.trial}: {cfg.sweep.metric} {best.metric:.4f}).\n"
              f"#   local:   platypus-ray train --config {best_path}\n"
              f"#   cluster: ray job submit --working-dir . -- python jobs/finetune.py --config {best_path}\n")
    write_text(best_path, header + yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
    return files, markdown_table(rows, cfg.sweep.metric), best_path, best.adapter or None


def _targets(text: str):
    return text if "," not in text and text in ("attention", "mlp", "all") else text.split(",")


def _best(values: list[float], mode: str) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def _plot(rows: list[TrialRow], metric: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in rows:
        if row.history:
            steps, values = zip(*row.history)
            ax.plot(steps, values, marker="o", label=f"#{row.rank} r={row.lora_r} {row.target_modules} lr={row.learning_rate:g}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (evaluation rounds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
