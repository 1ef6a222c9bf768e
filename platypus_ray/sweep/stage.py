"""``platypus-ray sweep``: Ray Tune over LoRA rank, target modules and learning rate.

Train V2 pattern: each trial is a driver function that calls the train stage's ``run``
(the same function the CLI calls) with a ``TuneReportCallback``, so the scheduler sees every
evaluation round. The trial driver asks for no CPU (only a little memory): its Train
workers hold the CPUs/GPUs, and a driver holding a CPU would deadlock a small box.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune

from platypus_ray.errors import UserError
from platypus_ray.runtime import init_ray
from platypus_ray.sweep.config import SweepConfig
from platypus_ray.sweep.report import TrialRow, collect_rows, write_outputs
from platypus_ray.train.data import TokenizedData, prepare_data
from platypus_ray.train.plan import TrainPlan
from platypus_ray.train.stage import resolve_local_paths

TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 512 * 1024**2}


@dataclass
class SweepResult:
    """The ranked trials and where the sweep's outputs are."""

    sweep_dir: str
    rows: list[TrialRow]
    table: str
    best_config_path: str
    best_adapter: str | None
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return "\n".join(
            [self.table, f"best config: {self.best_config_path}", f"best adapter: {self.best_adapter or '(none completed)'}",
             *(f"{name}: {path}" for name, path in self.files.items())]
        )


def run(cfg: SweepConfig) -> SweepResult:
    """Run (or with ``resume: true`` continue) a sweep and write its ranked results."""
    cfg = resolve_local_paths(cfg)
    init_ray()
    concurrency = max_concurrent_trials(cfg)
    sweep_dir = cfg.run.run_dir
    exists = tune.Tuner.can_restore(sweep_dir)
    if cfg.resume and not exists:
        raise UserError(f"resume: no sweep to continue at {sweep_dir}; drop --resume to start one")
    if exists and not cfg.resume:
        raise UserError(f"a sweep named '{cfg.run.name}' exists at {sweep_dir}; continue it with --resume or set run.name")
    # Tokenise once here: every trial reads the same rows, and Ray Data work inside a trial
    # would be confined to the trial driver's CPU-less placement group.
    base = cfg.train_config(cfg.lora.r, cfg.lora.target_modules, None, "data", sweep_dir)
    data = prepare_data(base)
    plan = TrainPlan(base, None, data.train_rows, data.validation_rows, data.train_tokens, data.dropped_rows)
    plan.check()
    rounds = -(-plan.total_steps // cfg.training.eval_every)
    print(f"sweep: {plan.total_steps} steps ({rounds} evaluation rounds) per trial, {concurrency} trial(s) at a time",
          flush=True)
    if cfg.sweep.scheduler.type == "asha" and rounds > cfg.sweep.scheduler.max_t:
        print(f"sweep: note: scheduler.max_t {cfg.sweep.scheduler.max_t} < {rounds} rounds: every trial stops by "
              f"step {cfg.sweep.scheduler.max_t * cfg.training.eval_every}", flush=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, sweep=cfg.model_dump(mode="json"), trials_dir=f"{sweep_dir}/trials", data=data),
        TRIAL_DRIVER_RESOURCES,
    )
    if cfg.resume:
        tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(cfg),
            tune_config=tune.TuneConfig(
                metric=cfg.sweep.metric,
                mode=cfg.sweep.mode,
                scheduler=_scheduler(cfg),
                search_alg=_search(cfg),
                num_samples=cfg.sweep.num_samples,
                max_concurrent_trials=concurrency,
                time_budget_s=cfg.sweep.time_budget_s,
            ),
            run_config=tune.RunConfig(name=cfg.run.name, storage_path=cfg.run.storage_path),
        )
    grid = tuner.fit()
    rows = collect_rows(grid, cfg, plan.total_steps)
    if not any(row.metric is not None for row in rows):
        errors = "; ".join(f"{row.trial}: {row.status}" for row in rows)
        raise RuntimeError(f"no trial reported {cfg.sweep.metric} ({errors})")
    files, table, best_config, best_adapter = write_outputs(rows, cfg, sweep_dir)
    return SweepResult(sweep_dir, rows, table, best_config, best_adapter, files)


def max_concurrent_trials(cfg: SweepConfig) -> int:
    """``auto``: how many trials the cluster can run at once (its capacity over one trial's demand)."""
    demand = {name: amount * cfg.workers for name, amount in cfg.cluster.resources_per_worker.items() if amount}
    capacity = ray.cluster_resources()
    fits = min((int(capacity.get(name, 0) // need) for name, need in demand.items()), default=1)
    if cfg.sweep.max_concurrent_trials != "auto":
        return cfg.sweep.max_concurrent_trials
    if fits >= 1:
        return fits
    detail = ", ".join(f"{name}: {need:g} per trial, cluster has {capacity.get(name, 0):g}" for name, need in demand.items())
    if os.environ.get("RAY_ADDRESS"):
        print(f"sweep: the cluster cannot hold a trial yet ({detail}); running one at a time while it scales", flush=True)
        return 1
    raise UserError(
        f"sweep: not even one trial fits this Ray instance ({detail}); lower sweep.gpus_per_trial or "
        "cluster.resources_per_worker"
    )


def _trial(params: dict[str, Any], sweep: dict[str, Any], trials_dir: str, data: TokenizedData) -> None:
    """One Tune trial: a full train-stage run with the trial's LoRA settings."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from platypus_ray.train.stage import run as train

    cfg = SweepConfig.model_validate(sweep, context={"on_worker": True})
    name = tune.get_context().get_trial_id()  # the trial's Train run folder: trials/<trial id>/
    train(
        cfg.train_config(params["lora_r"], params["target_modules"], params.get("learning_rate"), name, trials_dir),
        callbacks=[TuneReportCallback()],
        data=data,
    )


def _param_space(cfg: SweepConfig) -> dict[str, Any]:
    sample = tune.grid_search if cfg.sweep.search == "grid" else tune.choice
    space = {"lora_r": sample(cfg.sweep.lora_r), "target_modules": sample(cfg.sweep.target_modules)}
    if cfg.sweep.learning_rate:
        space["learning_rate"] = sample(cfg.sweep.learning_rate)
    return space


def _scheduler(cfg: SweepConfig):
    s = cfg.sweep.scheduler
    if s.type == "fifo":
        return tune.schedulers.FIFOScheduler()
    return tune.schedulers.ASHAScheduler(
        time_attr="training_iteration", max_t=s.max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor
    )


def _search(cfg: SweepConfig):
    if cfg.sweep.search != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch()
