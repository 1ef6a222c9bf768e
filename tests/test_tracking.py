"""Tracking config and failure modes that need no Ray: an unreachable server fails at once and
before Ray starts (train, sweep, pipeline); a backend failing mid-run is one warning."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from platypus_ray.core.config import validate_config
from platypus_ray.core.errors import UserError
from platypus_ray.train.tracking import (
    TrackingSettings,
    TrackingTarget,
    check_reachable,
    flatten,
    remote_storage_problems,
)
from tests.helpers import train_raw


@pytest.mark.timeout(60)  # the probe's own bound is seconds; MLflow alone would retry for minutes
def test_an_unreachable_tracking_server_fails_fast_with_the_uri():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(UserError, match=rf"tracking.mlflow: the tracking server {uri} does not answer"):
        check_reachable(uri)


def test_local_store_uri_and_remote_storage_rules(tmp_path):
    assert TrackingSettings(mlflow=True).mlflow_uri(str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    assert TrackingSettings(mlflow=str(tmp_path / "mlruns")).mlflow_uri("x") == f"file:{tmp_path}/mlruns"
    assert TrackingSettings().mlflow_uri(str(tmp_path)) is None
    assert TrackingSettings(mlflow="http://host:5000").mlflow_uri("x") == "http://host:5000"
    problems = remote_storage_problems(TrackingSettings(mlflow=True, tensorboard=True), "s3://bucket/runs")
    assert len(problems) == 2 and "give a tracking server URI" in problems[0]
    assert flatten({"lora": {"r": 8, "target_modules": ["q_proj"]}, "x": None}) == {
        "lora.r": "8",
        "lora.target_modules": '["q_proj"]',
        "x": "null",
    }


@pytest.mark.timeout(120)  # the probe is bounded (MLflow alone retries ~100 s per store)
def test_every_store_is_opened_before_use_and_an_unusable_one_names_its_uri(tmp_path):
    db = tmp_path / "nested" / "mlflow.db"
    check_reachable(f"sqlite:///{db}")  # created and migrated now, not by the first trial
    assert db.stat().st_size > 0
    (tmp_path / "file").write_text("not a folder")
    for uri, fix in (
        (f"sqlite:///{tmp_path}/file/mlflow.db", "writable"),
        ("postgresql://127.0.0.1:1/mlflow", "install the store's driver"),
    ):
        with pytest.raises(UserError, match=rf"tracking.mlflow: the store {re.escape(uri)} cannot be used \(.*{fix}"):
            check_reachable(uri)


def _write_in_bursts(uri: str, experiment_id: str, worker: int, results) -> None:
    from mlflow.entities import Metric

    from platypus_ray.train.tracking import client, retry_locked

    mlflow = client(uri)
    run_id = retry_locked(mlflow.create_run, experiment_id, run_name=f"w{worker}").info.run_id
    for step in range(25):
        retry_locked(mlflow.log_batch, run_id, metrics=[Metric("loss", float(step), 0, step)])
    retry_locked(mlflow.set_terminated, run_id)
    results.put(run_id)


def test_concurrent_writers_to_one_sqlite_store_lose_nothing(tmp_path):
    """Four processes (a sweep's trials) writing to one SQLite file at once: every run and every
    metric point lands; a "database is locked" burst is retried, not dropped."""
    import multiprocessing

    from platypus_ray.train.tracking import client

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    check_reachable(uri)
    experiment = client(uri).create_experiment("burst")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_write_in_bursts, args=(uri, experiment, i, results)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    run_ids = {results.get(timeout=10) for _ in workers}
    mlflow = client(uri)
    for run_id in run_ids:
        assert mlflow.get_run(run_id).info.status == "FINISHED"
        assert [m.step for m in mlflow.get_metric_history(run_id, "loss")] == list(range(25))


def test_a_locked_database_is_retried_a_bounded_number_of_times(monkeypatch):
    from platypus_ray.train import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.retry_locked(locked_twice) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(RuntimeError, match="locked"):  # still locked after its tries: the caller warns
        tracking.retry_locked(locked_twice, tries=2)
    assert len(calls) == 2
    with pytest.raises(ValueError):  # anything else is not retried
        tracking.retry_locked(lambda: (_ for _ in ()).throw(ValueError("bad")))


def test_result_readers_do_not_import_torch():
    code = "import sys, platypus_ray.sweep.report, platypus_ray.sweep.runs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _dead_uri() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _log(callback, step: int = 1) -> None:
    callback.on_log(None, SimpleNamespace(global_step=step), None, logs={"loss": 1.5, "learning_rate": 1e-3})


@pytest.mark.timeout(60)  # MLflow's default retries would back off for minutes
def test_mlflow_dying_mid_run_is_one_warning_within_seconds(capsys, monkeypatch):
    from platypus_ray.train.callbacks import TrackingCallback

    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    callback = TrackingCallback(TrackingTarget(mlflow_uri=_dead_uri(), run_id="0" * 32))
    assert callback.mlflow is not None
    _log(callback)  # MLflow's default retries would back off for minutes here
    assert callback.mlflow is None
    _log(callback, step=2)
    callback.on_train_end(None, None, None)
    err = capsys.readouterr().err
    assert err.count("tracking: warning: logging to MLflow failed") == 1 and "training continues" in err
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the bounds apply to our requests only


def test_tensorboard_failures_are_one_warning_and_training_goes_on(capsys, tmp_path):
    from platypus_ray.train.callbacks import TrackingCallback

    (tmp_path / "file").write_text("not a folder")
    callback = TrackingCallback(TrackingTarget(tensorboard_dir=str(tmp_path / "file" / "tensorboard")))
    assert callback.writer is None
    _log(callback)
    callback.on_train_end(None, None, None)
    assert capsys.readouterr().err.count("tracking: warning: opening TensorBoard event files") == 1

    class BrokenWriter:  # a disk that fills up mid-run
        def add_scalar(self, *args):
            raise OSError(28, "No space left on device")

    callback = TrackingCallback(TrackingTarget(tensorboard_dir=str(tmp_path / "tensorboard")))
    _log(callback)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    callback.writer = BrokenWriter()
    _log(callback, step=2)
    _log(callback, step=3)
    callback.on_train_end(None, None, None)
    assert callback.writer is None
    assert capsys.readouterr().err.count("tracking: warning: writing TensorBoard events failed (OSError") == 1


@pytest.fixture
def dead_server_train_raw(tmp_path):
    """A train config whose tracking server does not answer (fake model and data folders: nothing
    past the checks may run)."""
    model, data = tmp_path / "model", tmp_path / "kept"
    model.mkdir()
    data.mkdir()
    (model / "config.json").write_text("{}")
    uri = _dead_uri()
    return uri, train_raw(str(model), str(data), str(tmp_path / "runs"), "dead", tracking={"mlflow": uri})


def _ray_must_not_start(*args, **kwargs):
    raise AssertionError("Ray started before the tracking server was checked")


def test_train_and_sweep_fail_on_a_dead_server_before_ray_starts(dead_server_train_raw, monkeypatch):
    from platypus_ray.sweep import stage as sweep_stage
    from platypus_ray.sweep.config import SweepConfig
    from platypus_ray.train import stage as train_stage
    from platypus_ray.train.config import TrainConfig

    monkeypatch.setattr(train_stage, "init_ray", _ray_must_not_start)
    monkeypatch.setattr(sweep_stage, "init_ray", _ray_must_not_start)
    uri, raw = dead_server_train_raw
    with pytest.raises(UserError, match=rf"tracking.mlflow: the tracking server {uri} does not answer"):
        train_stage.prepare(validate_config(TrainConfig, raw))
    sweep = validate_config(
        SweepConfig, {**raw, "run": {**raw["run"], "name": "dead-sweep"}, "sweep": {"space": {"lora.r": [4, 8]}}}
    )
    with pytest.raises(UserError, match=rf"tracking.mlflow: the tracking server {uri} does not answer"):
        sweep_stage.run(sweep)


def test_pipeline_fails_on_a_dead_server_before_ray_starts(dead_server_train_raw, monkeypatch, tmp_path, capsys):
    import platypus_ray.core.runtime
    from platypus_ray.cli import main

    monkeypatch.setattr(platypus_ray.core.runtime, "init_ray", _ray_must_not_start)
    uri, raw = dead_server_train_raw
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"train": raw}))
    assert main(["pipeline", "--config", str(path)]) == 2
    assert (
        f"platypus-ray pipeline: error: tracking.mlflow: the tracking server {uri} does not answer"
        in capsys.readouterr().err
    )


def test_an_unusable_sqlite_store_fails_train_before_ray_starts(dead_server_train_raw, monkeypatch, tmp_path, capsys):
    from platypus_ray.cli import main
    from platypus_ray.train import stage as train_stage

    monkeypatch.setattr(train_stage, "init_ray", _ray_must_not_start)
    _, raw = dead_server_train_raw
    (tmp_path / "taken").write_text("a file where the store's folder should be")
    uri = f"sqlite:///{tmp_path}/taken/mlflow.db"
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**raw, "tracking": {"mlflow": uri}}))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"platypus-ray train: error: tracking.mlflow: the store {uri} cannot be used"
    )
    assert "writable" in err[0]
