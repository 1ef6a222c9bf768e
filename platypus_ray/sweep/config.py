"""Sweep config: a train config plus the search space, the scheduler and trial resources."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, model_validator

from platypus_ray.config import StrictModel
from platypus_ray.train.config import TrainConfig

TargetSet = Literal["attention", "mlp", "all"] | list[str]


class SchedulerSettings(StrictModel):
    """ASHA stops trials whose metric trails the others at a rung; rounds = evaluations."""

    type: Literal["asha", "fifo"] = "asha"  # fifo: every trial runs to the end
    grace_period: int = Field(2, ge=1, description="evaluation rounds every trial gets")
    max_t: int = Field(10, ge=1, description="evaluation rounds at most")
    reduction_factor: float = Field(2, gt=1)

    @model_validator(mode="after")
    def _ordered(self) -> "SchedulerSettings":
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t})")
        return self


class SweepSettings(StrictModel):
    """What to search over and how trials share the cluster."""

    lora_r: list[int] = Field([8, 16, 64], min_length=1)
    target_modules: list[TargetSet] = Field(["attention", "mlp", "all"], min_length=1)
    learning_rate: list[float] | None = None  # null: the train config's learning rate
    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; random/optuna: trials")
    scheduler: SchedulerSettings = SchedulerSettings()
    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"
    gpus_per_trial: int | None = Field(None, ge=1, description="workers per trial (one GPU each; on CPU, CPU workers); default cluster.workers")
    max_concurrent_trials: int | Literal["auto"] = "auto"  # auto: cluster capacity / per-trial demand
    time_budget_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _optuna_installed(self) -> "SweepSettings":
        if self.search == "optuna" and importlib.util.find_spec("optuna") is None:
            raise ValueError("search: optuna needs the optuna package (pip install optuna); or use grid | random")
        return self


class SweepConfig(TrainConfig):
    """Root config of ``platypus-ray sweep``: every train key, plus ``sweep``."""

    sweep: SweepSettings = SweepSettings()
    resume: bool = False  # continue an interrupted sweep with the same run.name (Tune restore)

    _workers_key = "sweep.gpus_per_trial"

    @property
    def workers(self) -> int:
        """Ray Train workers of one trial."""
        return self.sweep.gpus_per_trial or self.cluster.workers

    @model_validator(mode="after")
    def _metric_needs_validation(self) -> "SweepConfig":
        if self.sweep.metric.startswith("eval_") and self.data.val_size == 0:
            raise ValueError(f"sweep.metric {self.sweep.metric} needs held-out rows: set data.val_size > 0")
        return self

    def train_config(self, lora_r: int, target_modules, learning_rate: float | None, name: str, storage: str) -> TrainConfig:
        """The train config of one trial."""
        raw = self.model_dump(mode="json", exclude={"sweep", "resume"})
        raw["lora"].update({"r": lora_r, "target_modules": target_modules})
        if learning_rate is not None:
            raw["training"]["learning_rate"] = learning_rate
        raw["cluster"]["workers"] = self.workers
        raw["run"].update({"name": name, "storage_path": storage})
        return TrainConfig.model_validate(raw, context={"on_worker": True})
