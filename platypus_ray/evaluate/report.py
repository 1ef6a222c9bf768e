"""The evaluate stage's result and its table: lm-eval's metrics per benchmark, model beside model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

_COUNTS = ("items", "num_fewshot")


@dataclass
class EvaluateResult:
    output: Path
    summary_data: dict
    models: list[str]
    wall_s: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        models, data = self.models, self.summary_data["models"]
        lines = [f"evaluate: {' vs '.join(models)} ({self.wall_s:.0f} s)"]
        rows = _metric_rows(data, models)
        if rows:
            columns = ["benchmark", "metric", "items", "shots", *models] + (["delta"] if len(models) > 1 else [])
            widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
            lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        for m in models:
            v = data[m].get("validation")
            if v:
                lines.append(
                    f"  validation {m}: loss {v['loss']:.4f} (perplexity {v['perplexity']:.2f}) "
                    f"over {v['rows']} rows, {v['tokens']} tokens"
                )
        if self.skipped:
            lines.append("  skipped (unscorable items): " + ", ".join(f"{k} {v}" for k, v in self.skipped.items()))
        lines.append(f"  outputs: {self.output}/{{summary.json, items.parquet, validation.parquet, samples/}}")
        return "\n".join(lines)


def _metric_rows(data: dict, models: list[str]) -> list[list[str]]:
    """One row per (benchmark, lm-eval metric): each model's value ±stderr, and first minus second."""
    rows = []
    for name, first in data[models[0]]["benchmarks"].items():
        metrics = [k for k in first if k not in _COUNTS and not k.split(",")[0].endswith("_stderr")]
        for metric in metrics:
            row = [name, metric, str(first["items"]), str(first["num_fewshot"])]
            values = [data[m]["benchmarks"][name].get(metric, math.nan) for m in models]
            for m, value in zip(models, values):
                stderr = data[m]["benchmarks"][name].get(_stderr_key(metric))
                row.append(
                    f"{value:.4f}" + (f" ±{stderr:.4f}" if isinstance(stderr, float) and math.isfinite(stderr) else "")
                )
            if len(models) > 1:
                row.append(f"{values[0] - values[1]:+.4f}")
            rows.append(row)
    return rows


def _stderr_key(metric: str) -> str:
    name, sep, filter_name = metric.partition(",")
    return f"{name}_stderr{sep}{filter_name}"
