"""Evaluate stage config: the model (and an optional one to compare with), benchmarks, held-out rows.

A benchmark entry is an lm-evaluation-harness task (``{task: arc_challenge, num_fewshot: 25}``,
or a task YAML of your own: ``{task: my_task, include_path: tasks/}``) or a benchmark file in one
of the formats refine's contamination check reads (``{path:, format:}``), which evaluate turns
into a thin lm-eval task YAML. ``benchmarks: open_llm_leaderboard`` is the leaderboard four.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from platypus_ray.core.config import ActorCount, CpusPerActor, StrictModel, check_model_folder, is_planned
from platypus_ray.core.dtypes import DTypeName
from platypus_ray.core.paths import is_remote
from platypus_ray.testsets import BenchmarkConfig


class TaskEntry(StrictModel):
    """One lm-evaluation-harness task or group, by the name lm-eval knows it by."""

    task: str = Field(min_length=1)
    num_fewshot: int | None = Field(None, ge=0, description="default: the task's own (0 when it sets none)")
    include_path: str | None = None  # a folder of task YAMLs (your own tasks, or local data_files copies)

    @field_validator("include_path")
    @classmethod
    def _folder_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not is_planned(value, info) and not os.path.isdir(os.path.expanduser(value)):
            raise ValueError(f"'{value}' is not a folder of task YAMLs")
        return value

    @property
    def benchmark_name(self) -> str:
        return self.task


BenchmarkEntry = TaskEntry | BenchmarkConfig

# The Open LLM Leaderboard (v1) tasks the Platypus paper reports, with the leaderboard's shots.
LEADERBOARD = [
    {"task": "arc_challenge", "num_fewshot": 25},
    {"task": "hellaswag", "num_fewshot": 10},
    {"task": "mmlu", "num_fewshot": 5},
    {"task": "truthfulqa_mc2", "num_fewshot": 0},
]
PRESETS = {"open_llm_leaderboard": LEADERBOARD}


def expand_preset(value: Any) -> Any:
    """``benchmarks: open_llm_leaderboard`` -> its task entries; anything else unchanged."""
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown benchmarks preset '{value}'; valid: {sorted(PRESETS)} or a list of entries")
        return [dict(entry) for entry in PRESETS[value]]
    return value


def benchmark_inputs(entries: list[BenchmarkEntry]) -> list[str]:
    """The files and folders the entries read (an output must never replace them)."""
    paths = [e.path for e in entries if isinstance(e, BenchmarkConfig)]
    paths += [e.fewshot_path for e in entries if isinstance(e, BenchmarkConfig) and e.fewshot_path]
    return paths + [e.include_path for e in entries if isinstance(e, TaskEntry) and e.include_path]


class ModelRef(StrictModel):
    """A causal LM: a hub id or a local folder (e.g. ``out/merged``), optionally plus a LoRA adapter."""

    name_or_path: str
    adapter: str | None = None  # a LoRA adapter folder; merged into the model in each actor
    dtype: DTypeName = "auto"  # auto: bf16 on GPU, fp32 on CPU
    label: str | None = None  # column name in the tables; default: the folder or hub name

    @field_validator("name_or_path")
    @classmethod
    def _model_exists_if_local(cls, value: str, info: ValidationInfo) -> str:
        return check_model_folder(value, info)

    @field_validator("adapter")
    @classmethod
    def _adapter_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or is_planned(value, info) or is_remote(value):
            return value
        if not os.path.isfile(os.path.join(os.path.expanduser(value), "adapter_config.json")):
            raise ValueError(f"'{value}' is not a LoRA adapter folder (no adapter_config.json)")
        return value

    @property
    def display_name(self) -> str:
        if self.label:
            return self.label
        name = self.name_or_path.rstrip("/").split("/")[-1]
        return f"{name}+{self.adapter.rstrip('/').split('/')[-1]}" if self.adapter else name


class ValidationSettings(StrictModel):
    """Held-out loss: rows in the kept/ schema, formatted and masked exactly as training does."""

    path: str
    rows: int = Field(500, ge=1, description="the first N rows are scored")
    add_eos_token: bool = True

    @field_validator("path")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        if not is_remote(value) and not is_planned(value, info) and not os.path.exists(value):
            raise ValueError(f"'{value}' does not exist")
        return value


class InferenceSettings(StrictModel):
    """The Ray Data actor pool that scores: one model replica per actor (one GPU each on a cluster)."""

    actors: ActorCount = 1
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the cluster has GPUs
    cpus_per_actor: CpusPerActor = 1.0
    max_length: int | None = Field(
        None, ge=8, description="tokens per sequence (left-truncated); default: the model's context"
    )


class EvaluateConfig(StrictModel):
    """Root config of ``platypus-ray evaluate``."""

    model: ModelRef
    compare_with: ModelRef | None = None  # e.g. the base model, for a side-by-side table
    benchmarks: list[BenchmarkEntry] = []
    validation: ValidationSettings | None = None
    inference: InferenceSettings = InferenceSettings()
    output: str = "out/eval"
    limit: int | None = Field(
        None, ge=1, description="score only the first N documents of each task (lm-eval's --limit)"
    )
    seed: int = 1234  # lm-eval's fewshot_random_seed (its default): the draws of tasks with a random sampler

    _preset = field_validator("benchmarks", mode="before")(classmethod(lambda cls, value: expand_preset(value)))

    def check_output(self) -> None:
        """Refuse an output whose replacement would delete an input or a folder this project did not write."""
        from platypus_ray.core.outputs import check_output

        models = [m for m in (self.model, self.compare_with) if m is not None]
        inputs = [m.name_or_path for m in models] + [m.adapter for m in models if m.adapter]
        inputs += benchmark_inputs(self.benchmarks) + ([self.validation.path] if self.validation else [])
        check_output(self.output, "output", inputs=inputs)

    @model_validator(mode="after")
    def _something_to_do(self) -> EvaluateConfig:
        if not self.benchmarks and self.validation is None:
            raise ValueError("give benchmarks, a validation set, or both")
        names = [b.benchmark_name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique (got {names}); set `name:` on each")
        if self.compare_with is not None and self.compare_with.display_name == self.model.display_name:
            raise ValueError("model and compare_with have the same label; set `label:` on one of them")
        return self
