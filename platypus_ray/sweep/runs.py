"""A sweep in MLflow: one parent run, one child run per trial (opened by the trial's own train
job), each child tagged with its values and final metric, the best one tagged ``best``."""

from __future__ import annotations

import json

from platypus_ray.sweep.config import SweepConfig
from platypus_ray.sweep.report import TrialRow
from platypus_ray.train.tracking import JobRun, TrackingSettings, client, flatten, retry_locked, warn

_CLOSING_STATUS = {"completed": "FINISHED", "stopped": "KILLED"}  # by the first word of TrialRow.status


def open_parent(cfg: SweepConfig, mlflow_uri: str | None, sweep_dir: str) -> JobRun:
    """The sweep's parent run (reopened on ``--resume``); no run when MLflow is off."""
    settings = TrackingSettings(mlflow=mlflow_uri or False, experiment=cfg.tracking.experiment or cfg.run.name)
    params = {
        **flatten(cfg.train_raw()),
        "sweep.space": json.dumps(cfg.sweep.space)[:6000],
        "sweep.metric": cfg.sweep.metric,
        "sweep.search": cfg.sweep.search,
    }
    return JobRun.open(settings, cfg.run.storage_path, sweep_dir, cfg.run.name, params, {"platypus.kind": "sweep"})


def tag_trials(parent: JobRun, rows: list[TrialRow], metric: str) -> None:
    """Final metric, status and rank on every child, each child closed; ``best`` on the winner;
    the parent closed. Done here, not by the trials: Tune ends a trial's process when it stops
    the trial, and the MLflow file store rewrites a run's meta.yaml in place, so a trial ended
    while closing its own run would leave a run no search can read."""
    run_id = parent.target.run_id
    if run_id is None:
        return
    try:
        mlflow = client(parent.target.mlflow_uri)
        experiment = mlflow.get_run(run_id).info.experiment_id
        children = mlflow.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
        by_trial = {child.data.tags.get("platypus.trial"): child.info.run_id for child in children}
        ranked = [row for row in rows if row.metric is not None]
        for row in rows:
            child = by_trial.get(row.trial)
            if child is None:
                continue
            tags = {"status": row.status, "rank": str(row.rank), "best": str(bool(ranked) and row is ranked[0]).lower()}
            if row.metric is not None:
                tags[f"final_{metric}"] = f"{row.metric:.6g}"
            if row.adapter:
                tags["adapter_path"] = row.adapter
            if row.step is not None:
                tags["final_step"] = str(row.step)
            for key, value in tags.items():
                retry_locked(mlflow.set_tag, child, key, value)
            retry_locked(mlflow.set_terminated, child, status=_CLOSING_STATUS.get(row.status.split(" ")[0], "FAILED"))
        if ranked:
            parent.finish({"best_trial": ranked[0].trial, f"best_{metric}": f"{ranked[0].metric:.6g}"})
        else:
            parent.finish({}, status="FAILED")
    except Exception as exc:  # noqa: BLE001 - tracking is best-effort: any MLflow failure is a warning, the sweep result stands
        warn("tagging the sweep's MLflow runs", exc)
