"""Real Ray Tune over real Ray Train runs (1 or 2 CPU workers per trial) on the tiny LLaMA."""

from __future__ import annotations

import csv
import math
import threading
import time
from pathlib import Path

import pytest
import yaml

from platypus_ray.core.config import validate_config
from platypus_ray.sweep import SweepConfig, run
from platypus_ray.train.config import TrainConfig
from tests.helpers import train_raw

pytestmark = pytest.mark.slow


def sweep_config(tiny_model, kept_folder, storage, name, workers=2, tracking=None, max_steps=10, eval_every=5, **sweep):
    raw = train_raw(
        tiny_model,
        kept_folder,
        storage,
        name,
        training={"max_steps": max_steps, "eval_every": eval_every},
        cluster={"workers": workers},
        tracking=tracking or {},
    )
    raw["sweep"] = {"max_concurrent_trials": "auto", **sweep}
    return validate_config(SweepConfig, raw)


def hold_one_cpu(ray):
    """A competing reservation: one of the 2 CPUs, held by a placement group."""
    from ray.util.placement_group import placement_group

    hog = placement_group([{"CPU": 1}])
    ray.get(hog.ready(), timeout=60)
    return hog


def release_after_a_retry(hog, stop: threading.Event, retried: threading.Event, timeout_s: float = 180) -> None:
    """Remove ``hog`` once a second worker-group reservation has been seen pending (Ray Train gave
    up on the first and asked again), and say so in ``retried``; give up after ``timeout_s``."""
    from ray.util import placement_group_table
    from ray.util.placement_group import remove_placement_group

    def asks_for_cpus(info: dict) -> bool:  # a worker group's reservation, not a trial driver's (CPU 0)
        return sum(bundle.get("CPU", 0) for bundle in info["bundles"].values()) >= 1

    pending: set[str] = set()
    deadline = time.time() + timeout_s
    while not stop.is_set() and time.time() < deadline:
        table = placement_group_table()
        pending |= {
            pg
            for pg, info in table.items()
            if pg != hog.id.hex() and info["state"] == "PENDING" and asks_for_cpus(info)
        }
        if len(pending) >= 2:
            retried.set()
            break
        time.sleep(0.2)
    remove_placement_group(hog)


def test_grid_every_trial_has_a_real_eval_loss(ray_session, tiny_model, kept_folder, tmp_path):
    # A grid over a number and a module list (their product is checked without Ray in
    # test_sweep_config). One worker of half a CPU per trial: `auto` runs both trials side by side
    # on the 2 CPUs. Two evaluation rounds of 2 steps each.
    cfg = sweep_config(
        tiny_model,
        kept_folder,
        str(tmp_path),
        "grid",
        workers=1,
        tracking={"mlflow": True},
        max_steps=4,
        eval_every=2,
        space={"lora.r": [4, 8], "lora.target_modules": ["mlp"]},
        scheduler={"type": "asha", "grace_period": 2, "max_t": 2},
    )
    cfg.cluster.resources_per_worker = {"CPU": 0.5}
    result = run(cfg)
    assert len(result.rows) == 2
    assert {(r.params["lora.r"], r.params["lora.target_modules"]) for r in result.rows} == {(4, "mlp"), (8, "mlp")}
    for row in result.rows:  # Tune can call a trial TERMINATED that never reported: not here
        assert row.metric is not None and math.isfinite(row.metric) and row.rounds == 2, row
        assert row.status == "completed" and Path(row.adapter, "adapter_model.safetensors").is_file()
    metrics = [r.metric for r in result.rows]
    assert metrics == sorted(metrics) and [r.rank for r in result.rows] == [1, 2]
    with open(Path(result.sweep_dir, "results.csv")) as handle:
        assert [int(r["rank"]) for r in csv.DictReader(handle)] == [1, 2]
    assert Path(result.sweep_dir, "eval_loss.png").stat().st_size > 1000
    assert "| 1 |" in result.table
    assert result.best_adapter == result.rows[0].adapter
    _check_mlflow(result, f"sqlite:///{tmp_path}/mlflow.db")  # tracking.mlflow: true; both trials wrote at once

    # best.yaml is the config the best trial ran, under a new name. (Not trained again here: a
    # config determines its run bit for bit, which the train tests' restarted run shows.)
    best = validate_config(TrainConfig, yaml.safe_load(Path(result.best_config_path).read_text()))
    ran = validate_config(TrainConfig, yaml.safe_load(Path(result.rows[0].config).read_text()))
    assert best.run.name == "grid-best" and best.model_dump(exclude={"run"}) == ran.model_dump(exclude={"run"})
    assert (best.lora.r, best.lora.target_modules) == (
        result.rows[0].params["lora.r"],
        result.rows[0].params["lora.target_modules"],
    )


def _check_mlflow(result, uri):
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["grid"])
    parents = runs[runs["tags.platypus.kind"] == "sweep"]
    assert len(parents) == 1
    parent = parents.iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert len(children) == 2 and len(runs) == 3
    by_trial = {row["tags.platypus.trial"]: row for _, row in children.iterrows()}
    for row in result.rows:
        child = by_trial[row.trial]
        assert child["tags.space.lora.r"] == str(row.params["lora.r"])
        assert float(child["tags.final_eval_loss"]) == pytest.approx(row.metric, rel=1e-5)
        assert child["tags.best"] == ("true" if row.rank == 1 else "false")
        assert child["status"] == "FINISHED" and child["tags.adapter_path"] == row.adapter  # the sweep closed it
        assert child["metrics.eval_loss"] == pytest.approx(row.metric, rel=1e-5)  # logged by the trial's rank 0
        assert math.isfinite(child["metrics.loss"])
    assert parent["tags.best_trial"] == result.rows[0].trial and parent["status"] == "FINISHED"


@pytest.mark.timeout(600)  # auto concurrency on 2 CPUs with 2 workers per trial must not hang
def test_asha_stops_the_diverging_trial_before_max_t(ray_session, tiny_model, kept_folder, tmp_path):
    # `auto` with 2 workers per trial on 2 CPUs: trials run one at a time in grid order: the good trial sets the rung,
    # the one with a learning rate 100x too high is far worse at its first evaluation and gets stopped there.
    cfg = sweep_config(
        tiny_model,
        kept_folder,
        str(tmp_path),
        "asha",
        space={"training.learning_rate": [5e-3, 0.5]},
        scheduler={"type": "asha", "grace_period": 1, "max_t": 2},
    )
    from ray.util.placement_group import remove_placement_group

    # A busy box first: other work holds one of the 2 CPUs. The first trial's worker group cannot
    # be placed; Ray Train releases the reservation after 3 s and asks again: once it has, the
    # other work ends, and the retry fits.
    cfg.run.placement_timeout_s = 3
    hog = hold_one_cpu(ray_session)
    stop, retried = threading.Event(), threading.Event()
    release = threading.Thread(target=release_after_a_retry, args=(hog, stop, retried), daemon=True)
    release.start()
    try:
        result = run(cfg)
    finally:
        stop.set()
        release.join(timeout=30)
        if release.is_alive():  # stuck in a Ray call: free the CPU for the tests after this one
            remove_placement_group(hog)
    assert retried.is_set(), "the first trial's worker group never had to be placed again"
    by_lr = {row.params["training.learning_rate"]: row for row in result.rows}
    assert by_lr[5e-3].rounds == 2 and by_lr[5e-3].status == "completed"
    assert by_lr[0.5].rounds == 1 and by_lr[0.5].status.startswith("stopped early")
    assert by_lr[0.5].metric > by_lr[5e-3].metric  # stopped trials keep their last metrics
    assert result.rows[0].params["training.learning_rate"] == 5e-3

    # --resume restores the finished sweep from Tune's state: same trials, nothing retrained.
    resumed = run(cfg.model_copy(update={"resume": True}))
    assert [(r.trial, r.metric, r.rounds) for r in resumed.rows] == [(r.trial, r.metric, r.rounds) for r in result.rows]


def test_resume_without_a_sweep_is_a_clear_error(ray_session, tiny_model, kept_folder, tmp_path):
    from platypus_ray.core.errors import UserError

    cfg = sweep_config(tiny_model, kept_folder, str(tmp_path), "never-ran", space={"lora.r": [4]})
    with pytest.raises(UserError, match="resume: no sweep to continue at .*never-ran; drop --resume to start one"):
        run(cfg.model_copy(update={"resume": True}))
