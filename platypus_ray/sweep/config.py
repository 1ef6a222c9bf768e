"""Sweep config: a train config plus ``sweep``: the search space over train keys, the scheduler, concurrency."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from platypus_ray.core.config import StrictModel
from platypus_ray.train.config import TrainConfig


class SchedulerSettings(StrictModel):
    """ASHA stops trials whose metric trails the others at a rung; rounds = evaluations."""

    type: Literal["asha", "fifo"] = Field(
        "asha", description="asha: stop trailing trials early; fifo: every trial runs to the end"
    )
    grace_period: int = Field(2, ge=1, description="evaluation rounds every trial gets")
    max_t: int = Field(10, ge=1, description="evaluation rounds at most")
    reduction_factor: float = Field(2, gt=1, description="ASHA: about 1 in this many trials go on at each rung")

    @model_validator(mode="after")
    def _ordered(self) -> SchedulerSettings:
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t})")
        return self


class SweepSettings(StrictModel):
    """What to search over and how trials share the cluster."""

    space: dict[str, Any] = Field(
        default_factory=lambda: {"lora.r": [8, 16, 64], "lora.target_modules": ["attention", "mlp", "all"]},
        min_length=1,
        description="dotted train key -> a list (grid, or choices for random/optuna) or a distribution "
        "({loguniform: [lo, hi]}, {uniform: [lo, hi]}, {randint: [lo, hi)}); data.*, model.name_or_path and "
        "training.seed take lists only",
    )
    search: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid: every combination of the lists; random: draws; optuna: Optuna's sampler"
    )
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; random/optuna: trials")
    scheduler: SchedulerSettings = Field(SchedulerSettings(), description="which trials stop early")
    metric: str = Field(
        "eval_loss", description="the reported metric trials are ranked by; eval_* needs data.val_size > 0"
    )
    mode: Literal["min", "max"] = Field("min", description="whether a lower or a higher metric is better")
    max_concurrent_trials: int | Literal["auto"] = Field(
        "auto", description="auto: the cluster's capacity / one trial's demand"
    )
    time_budget_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="stop starting and running trials after this long; null: no limit"
    )


class SweepConfig(TrainConfig):
    """Root config of ``platypus-ray sweep``: every train key (what each trial starts from), plus ``sweep``."""

    sweep: SweepSettings = Field(SweepSettings(), description="the search space, the scheduler, concurrency")
    resume: bool = Field(
        False, description="continue an interrupted sweep with the same run.name (Tune restore); --resume"
    )

    @model_validator(mode="after")
    def _checked_space(self) -> SweepConfig:
        from platypus_ray.sweep.space import space_problems

        problems = []
        if self.sweep.metric.startswith("eval_") and self.data.val_size == 0:
            problems.append(f"sweep.metric {self.sweep.metric} needs held-out rows: set data.val_size > 0")
        problems += space_problems(self)
        if problems:
            raise ValueError("\n    ".join(problems))
        return self

    def train_raw(self) -> dict[str, Any]:
        """The train part of this config, as a raw mapping (what every trial starts from)."""
        return self.model_dump(mode="json", exclude={"sweep", "resume"})
