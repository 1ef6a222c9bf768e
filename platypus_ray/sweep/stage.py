"""``platypus-ray sweep``: Ray Tune over any train-config keys (``sweep.space``), ASHA.

Train V2 pattern: each trial is a driver function that calls the train stage's own
``prepare`` and ``fit`` on the sweep's train config with the trial's values set, with a
``TuneReportCallback`` so the scheduler sees every evaluation round. The trial driver asks
for no CPU (only a little memory): its Train workers hold the CPUs/GPUs, and a driver
holding a CPU would deadlock a small box.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

from ray import tune

from platypus_ray.core.errors import UserError
from platypus_ray.core.outputs import mark_output
from platypus_ray.core.runtime import init_ray
from platypus_ray.core.stage import Input, Output, Stage
from platypus_ray.sweep.config import SweepConfig
from platypus_ray.sweep.report import TrialRow, collect_rows, write_outputs
from platypus_ray.sweep.runs import open_parent, tag_trials
from platypus_ray.sweep.space import data_key, data_variants, param_space, trial_config
from platypus_ray.train.capacity import check_cluster_fits
from platypus_ray.train.data import TokenizedData, prepare_data
from platypus_ray.train.plan import TrainPlan, model_size
from platypus_ray.train.stage import START_TIMEOUT_ENV, resolve_local_paths, train_inputs
from platypus_ray.train.tracking import check_reachable

logger = logging.getLogger(__name__)

TRIAL_DRIVER_RESOURCES: dict[str, float] = {"CPU": 0, "memory": 512 * 1024**2}
LOCAL_PLACEMENT_RETRIES = 4  # on a fixed local instance nothing new arrives: a trial must not wait forever


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
            [
                self.table,
                f"best config: {self.best_config_path}",
                f"best adapter: {self.best_adapter or '(none completed)'}",
                *(f"{name}: {path}" for name, path in self.files.items()),
            ]
        )


class SweepStage(Stage[SweepConfig, None, SweepResult]):
    """The train inputs (every data variant's) in; a sweep folder (trials, ranked results, best.yaml) out."""

    name = "sweep"
    config = SweepConfig

    def inputs(self, cfg: SweepConfig) -> list[Input]:
        found = {item.path: item for item in train_inputs(cfg)}
        base = cfg.train_raw()
        for variant in data_variants(cfg):  # a searched model or data path is read by its trials
            for item in train_inputs(trial_config(base, variant)):
                key = next((k for k in variant if item.key == k), None)
                if key is not None:
                    found.setdefault(item.path, replace(item, key=f"sweep.space.{key} = {item.path!r}"))
        return list(found.values())

    def outputs(self, cfg: SweepConfig) -> list[Output]:
        return [Output("run.storage_path", cfg.run.run_dir)]

    def check(self, cfg: SweepConfig, planned: frozenset[str]) -> None:
        """The search library is installed, the tracking store answers, and a sweep of this name
        is continued only with ``resume`` (and only then)."""
        if cfg.sweep.search == "optuna" and importlib.util.find_spec("optuna") is None:
            raise UserError("sweep.search: optuna needs the optuna package (pip install optuna); or use grid | random")
        check_reachable(cfg.tracking.mlflow_uri(cfg.run.storage_path))
        sweep_dir = resolve_local_paths(cfg).run.run_dir
        exists = tune.Tuner.can_restore(sweep_dir)
        if cfg.resume and not exists:
            raise UserError(f"resume: no sweep to continue at {sweep_dir}; drop --resume to start one")
        if exists and not cfg.resume:
            raise UserError(
                f"a sweep named '{cfg.run.name}' exists at {sweep_dir}; continue it with --resume or set run.name"
            )

    def check_cluster(self, cfg: SweepConfig) -> None:
        init_ray()
        check_cluster_fits(cfg.cluster, what="sweep")

    def execute(self, cfg: SweepConfig, checked: None) -> SweepResult:
        """Run (or with ``resume: true`` continue) a sweep and write its ranked results."""
        return _sweep(resolve_local_paths(cfg))


STAGE = SweepStage()
run = STAGE.run


def _sweep(cfg: SweepConfig) -> SweepResult:
    sweep_dir = cfg.run.run_dir
    uri = cfg.tracking.mlflow_uri(cfg.run.storage_path)
    concurrency = max_concurrent_trials(cfg)
    os.makedirs(sweep_dir, exist_ok=True)
    mark_output(sweep_dir, "sweep")
    base = trial_base(cfg, uri)
    data = _prepare_variants(cfg, base)
    parent = open_parent(cfg, uri, sweep_dir)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, base=base, trials_dir=f"{sweep_dir}/trials", data=data, parent_run_id=parent.target.run_id
        ),
        TRIAL_DRIVER_RESOURCES,
    )
    if cfg.resume:
        tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=_tune_config(cfg, concurrency),
            run_config=tune.RunConfig(name=cfg.run.name, storage_path=cfg.run.storage_path),
        )
    logger.info("sweep: %d trial(s) at a time", concurrency)
    try:
        grid = tuner.fit()
    except BaseException:
        parent.finish({}, status="FAILED")  # else the parent run stays RUNNING: tag_trials never runs
        raise
    rows = collect_rows(grid, cfg, f"{sweep_dir}/trials")
    tag_trials(parent, rows, cfg.sweep.metric)
    if not any(row.metric is not None for row in rows):
        errors = "; ".join(f"{row.trial}: {row.status}" for row in rows)
        raise UserError(f"sweep: no trial reported {cfg.sweep.metric} ({errors})")
    files, table, best_config = write_outputs(rows, cfg, sweep_dir)
    return SweepResult(sweep_dir, rows, table, best_config, rows[0].adapter or None, files)


def _prepare_variants(cfg: SweepConfig, base: dict[str, Any]) -> dict[str, TokenizedData]:
    """Tokenise once per data variant (trials read the same rows, and Ray Data work inside a trial
    would be confined to the trial driver's CPU-less placement group); check and print each
    variant's plan at the sweep's own values of the other keys, with the model's size."""
    data: dict[str, TokenizedData] = {}
    variants = data_variants(cfg)
    for variant in variants:
        variant_cfg = trial_config(base, variant)
        data[data_key(variant_cfg)] = prepared = prepare_data(variant_cfg)
        plan = TrainPlan.for_data(variant_cfg, model_size(variant_cfg), prepared)
        plan.check()
        rounds = -(-plan.total_steps // variant_cfg.training.eval_every)
        shown = f" ({', '.join(f'{k}={v}' for k, v in variant.items())})" if len(variants) > 1 else ""
        logger.info("sweep: %d steps (%d evaluation rounds) per trial%s", plan.total_steps, rounds, shown)
        scheduler = cfg.sweep.scheduler
        if scheduler.type == "asha" and rounds > scheduler.max_t:
            logger.info(
                "sweep: note: scheduler.max_t %d < %d rounds%s: every trial stops by step %d",
                scheduler.max_t,
                rounds,
                shown,
                scheduler.max_t * variant_cfg.training.eval_every,
            )
    return data


def trial_base(cfg: SweepConfig, mlflow_uri: str | None) -> dict[str, Any]:
    """The train config every trial starts from: the sweep's, with tracking pointed at the sweep's
    store and experiment, and worker-group placement bounded on a fixed local instance."""
    base = cfg.train_raw()
    base["tracking"] = {
        "mlflow": mlflow_uri or False,
        "experiment": cfg.tracking.experiment or cfg.run.name,
        "tensorboard": cfg.tracking.tensorboard,
    }
    if cfg.run.placement_retries == -1 and not os.environ.get("RAY_ADDRESS"):
        base["run"]["placement_retries"] = LOCAL_PLACEMENT_RETRIES
    if cfg.run.placement_timeout_s is None and os.environ.get(START_TIMEOUT_ENV):
        base["run"]["placement_timeout_s"] = float(os.environ[START_TIMEOUT_ENV])  # trial drivers do not inherit it
    return base


def max_concurrent_trials(cfg: SweepConfig) -> int:
    """``auto``: how many trials the cluster can run at once (its capacity over one trial's demand)."""
    fits = check_cluster_fits(cfg.cluster, what="sweep")
    return fits if cfg.sweep.max_concurrent_trials == "auto" else cfg.sweep.max_concurrent_trials


def _trial(
    params: dict[str, Any],
    base: dict[str, Any],
    trials_dir: str,
    data: dict[str, TokenizedData],
    parent_run_id: str | None,
) -> None:
    """One Tune trial: the train stage's prepare + fit with the trial's values."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from platypus_ray.core import log
    from platypus_ray.train.stage import fit, prepare

    log.setup()  # a trial runs in its own process: its plan lines reach the driver's console
    name = tune.get_context().get_trial_id()  # the trial's Train run folder: trials/<trial id>/
    point = dict(params)  # the trial's values, keyed by dotted train-config keys
    cfg = trial_config(base, {**point, "run.name": name, "run.storage_path": trials_dir})
    tags = {"platypus.trial": name, **{f"space.{k}": json.dumps(v) for k, v in point.items()}}
    job = prepare(cfg, data=data[data_key(cfg)], tracking_parent=parent_run_id, tracking_tags=tags)
    fit(job, callbacks=[TuneReportCallback()])


def _tune_config(cfg: SweepConfig, concurrency: int) -> tune.TuneConfig:
    s = cfg.sweep
    if s.scheduler.type == "fifo":
        scheduler = tune.schedulers.FIFOScheduler()
    else:
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="training_iteration",
            max_t=s.scheduler.max_t,
            grace_period=s.scheduler.grace_period,
            reduction_factor=s.scheduler.reduction_factor,
        )
    search = None
    if s.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch()
    return tune.TuneConfig(
        metric=s.metric,
        mode=s.mode,
        scheduler=scheduler,
        search_alg=search,
        num_samples=s.num_samples,
        max_concurrent_trials=concurrency,
        time_budget_s=s.time_budget_s,
    )
