"""Sweep outputs: ranked ``results.csv`` + markdown table, ``<metric>.png``, ``best.yaml``.

Reads results only: no torch, no model code.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from platypus_ray.core.paths import is_file, read_text, write_bytes, write_text
from platypus_ray.sweep.config import SweepConfig
from platypus_ray.train.layout import CHECKPOINT_SUBDIR

logger = logging.getLogger(__name__)


@dataclass
class TrialRow:
    """One trial: its values for the searched keys, last and best metric, how far it got, its adapter."""

    trial: str
    params: dict[str, Any]
    metric: float | None
    best_metric: float | None
    rounds: int
    step: int | None
    total_steps: int | None
    status: str
    adapter: str = ""
    config: str = ""  # the trial's resolved train config (what ran)
    rank: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def shown(self, key: str) -> str:
        value = self.params.get(key)
        if isinstance(value, float):
            return f"{value:.4g}"
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def collect_rows(grid, cfg: SweepConfig, trials_dir: str) -> list[TrialRow]:
    """Rows from Tune's ResultGrid, ranked by the last reported metric (trials without one last).

    A trial's adapter is the one in its last checkpoint: Tune stops a trial as soon as it
    reports round ``max_t`` (or loses an ASHA rung), so the trial never gets past ``fit``. Each
    trial's step count is its own (its data variant and searched keys set it), as its workers reported it."""
    rows = []
    metric = cfg.sweep.metric
    for result in grid:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or os.path.basename(result.path or "?"))
        frame = result.metrics_dataframe
        history: list[tuple[int, float]] = []
        if frame is not None and metric in frame:
            clean = frame.dropna(subset=[metric])
            history = [(int(s), float(v)) for s, v in zip(clean.get("step", clean.index), clean[metric])]
        value = metrics.get(metric)
        adapter = f"{metrics.get('checkpoint_path', '')}/{CHECKPOINT_SUBDIR}"
        config = f"{trials_dir}/{trial_id}/config.yaml"
        rows.append(
            TrialRow(
                trial=trial_id,
                params={k: (result.config or {}).get(k) for k in cfg.sweep.space},
                metric=None if value is None else float(value),
                best_metric=_best([v for _, v in history], cfg.sweep.mode),
                rounds=int(metrics.get("training_iteration", len(history)) or 0),
                step=metrics.get("step"),
                total_steps=metrics.get("total_steps"),
                status=_status(result.error, value, metrics.get("step"), metrics.get("total_steps"), metric),
                adapter=adapter if is_file(f"{adapter}/adapter_model.safetensors") else "",
                config=config if is_file(config) else "",
                history=history,
            )
        )
    sign = 1 if cfg.sweep.mode == "min" else -1
    rows.sort(key=lambda r: (r.metric is None, sign * r.metric if r.metric is not None else 0.0, r.trial))
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
    return rows


def _status(error: BaseException | None, value: Any, step: int | None, total_steps: int | None, metric: str) -> str:
    if error is not None:
        from platypus_ray.core.errors import find_user_error

        reason = find_user_error(error) or error
        return f"error: {str(reason).splitlines()[0][:300]}"
    if value is None:
        return f"no {metric} reported"
    return "completed" if total_steps is not None and (step or 0) >= total_steps else f"stopped early at step {step}"


def markdown_table(rows: list[TrialRow], keys: list[str], metric: str) -> str:
    header = f"| rank | trial | {' | '.join(keys)} | {metric} | best | rounds | status |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        value = "-" if r.metric is None else f"{r.metric:.4f}"
        best = "-" if r.best_metric is None else f"{r.best_metric:.4f}"
        cells = " | ".join(r.shown(k) for k in keys)
        lines.append(f"| {r.rank} | {r.trial} | {cells} | {value} | {best} | {r.rounds} | {r.status} |")
    return "\n".join(lines)


def write_outputs(rows: list[TrialRow], cfg: SweepConfig, sweep_dir: str) -> tuple[dict[str, str], str, str]:
    """results.csv, <metric>.png, best.yaml; returns (files, markdown table, best config path)."""
    keys = list(cfg.sweep.space)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "trial", *keys, "metric", "best_metric", "rounds", "step", "status", "adapter", "config"])
    for r in rows:
        writer.writerow(
            [
                r.rank,
                r.trial,
                *(json.dumps(r.params.get(k)) for k in keys),
                r.metric,
                r.best_metric,
                r.rounds,
                r.step,
                r.status,
                r.adapter,
                r.config,
            ]
        )
    files = {"results": f"{sweep_dir}/results.csv", "plot": f"{sweep_dir}/{cfg.sweep.metric}.png"}
    write_text(files["results"], buffer.getvalue())
    write_bytes(files["plot"], _plot(rows, keys, cfg.sweep.metric))
    best_path = f"{sweep_dir}/best.yaml"
    write_text(best_path, best_config_text(rows[0], cfg, best_path))
    return files, markdown_table(rows, keys, cfg.sweep.metric), best_path


def best_config_text(best: TrialRow, cfg: SweepConfig, best_path: str) -> str:
    """The config the best trial ran, under a new run.name; when it stopped early (an ASHA rung,
    ``max_t``, the time budget), ``training.max_steps`` is the step its metric comes from."""
    ran = yaml.safe_load(read_text(best.config) or "{}")
    ran["run"] = {**ran.get("run", {}), "name": f"{cfg.run.name}-best", "storage_path": cfg.run.storage_path}
    header = (
        f"# Best trial of sweep '{cfg.run.name}' ({best.trial}: {cfg.sweep.metric} {best.metric:.4f}): the config\n"
        f"# it ran ({best.config}), under a new run.name so it trains afresh.\n"
    )
    total_steps = best.total_steps
    if best.step is not None and total_steps is not None and 0 < int(best.step) < total_steps:
        ran["training"] = {**ran.get("training", {}), "max_steps": int(best.step)}
        note = (
            f"stopped early at step {best.step} of {total_steps}: training.max_steps is {best.step} "
            f"here (the trial ran the first {best.step} steps of a {total_steps}-step learning-rate schedule)"
        )
        header += f"# Note: {note}.\n"
        logger.info("sweep: note: best trial %s %s", best.trial, note)
    header += (
        f"#   local:   platypus-ray train --config {best_path}\n"
        f"#   cluster: ray job submit --working-dir . -- python jobs/finetune.py --config {best_path}\n"
    )
    return header + yaml.safe_dump(ran, sort_keys=False)


def _best(values: list[float], mode: str) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def _plot(rows: list[TrialRow], keys: list[str], metric: str) -> bytes:
    from platypus_ray.sweep.plots import new_figure, png_bytes

    fig, ax = new_figure((8, 4.5))
    for row in rows:
        if row.history:
            steps, values = zip(*row.history)
            label = " ".join(f"{k.rsplit('.', 1)[-1]}={row.shown(k)}" for k in keys)
            ax.plot(steps, values, marker="o", label=f"#{row.rank} {label}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (evaluation rounds)")
    ax.legend(fontsize=8)
    return png_bytes(fig)
