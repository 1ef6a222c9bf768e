"""Experiment tracking for train and sweep: one MLflow run per training job, TensorBoard files.

The driver opens the MLflow run (params: the resolved config flattened, and the plan) and
closes it (the adapter path as a tag); rank 0 alone logs per-step metrics into that run
(``TrackingCallback``), so a multi-worker job never becomes one run per worker. A rerun that
resumes a job reopens the same run (its id is kept in ``<run folder>/tracking.json``). A
sweep is a parent run with one child run per trial. An unreachable server fails before Ray
starts; a logging failure mid-run is a warning and training goes on.

    mlflow ui --backend-store-uri out/train/mlruns      # tracking.mlflow: true
    tensorboard --logdir out/train                      # tracking.tensorboard: true
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from platypus_ray.config import StrictModel
from platypus_ray.errors import UserError
from platypus_ray.paths import is_remote, read_text, write_text

_PARAM_MAX = 6000  # MLflow's limit on a param value


class TrackingSettings(StrictModel):
    """Where training metrics go besides ``metrics.jsonl``; off by default."""

    mlflow: bool | str = Field(False, description="true: a local store under run.storage_path/mlruns; "
                                                  "or a tracking URI (http://host:5000, file:/path)")
    experiment: str | None = None  # default: run.name
    tensorboard: bool = False  # event files under <run folder>/tensorboard/

    def mlflow_uri(self, storage_path: str) -> str | None:
        """The tracking URI, or None when MLflow is off."""
        if self.mlflow is False:
            return None
        if self.mlflow is True:
            return "file:" + os.path.abspath(os.path.join(storage_path, "mlruns"))
        if "://" not in self.mlflow and not self.mlflow.startswith("file:"):
            return "file:" + os.path.abspath(self.mlflow)
        return self.mlflow


def remote_storage_problems(settings: TrackingSettings, storage_path: str) -> list[str]:
    """Config problems: local stores and event files need a local or shared-filesystem folder."""
    if not is_remote(storage_path):
        return []
    problems = []
    if settings.mlflow is True:
        problems.append(f"tracking.mlflow: true keeps its store under run.storage_path, which is remote "
                        f"({storage_path}); give a tracking server URI (tracking.mlflow: http://host:5000)")
    if settings.tensorboard:
        problems.append(f"tracking.tensorboard writes event files under run.storage_path, which is remote "
                        f"({storage_path}); use a shared-filesystem path or turn it off")
    return problems


@dataclass
class TrackingTarget:
    """What rank 0 needs to log into the job's run: plain values, cheap to ship to a worker."""

    mlflow_uri: str | None = None
    run_id: str | None = None
    tensorboard_dir: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.run_id or self.tensorboard_dir)


def client(uri: str):
    """An MLflow client; the file store (our ``mlflow: true``) is opted into explicitly."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    return MlflowClient(uri)


def check_reachable(uri: str | None) -> None:
    """Fail now (before Ray starts) when a tracking server does not answer."""
    if uri is None or not uri.startswith(("http://", "https://")):
        return
    try:
        with http_bounds(retries=0, timeout_s=5, keep_user_values=False):
            client(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure means the server is not usable
        reason = str(exc).splitlines()[0][:200]
        raise UserError(f"tracking.mlflow: the tracking server {uri} does not answer ({reason}); start it, "
                        "fix the URI, or set tracking.mlflow: true for a local store") from None


@contextmanager
def http_bounds(retries: int = 1, timeout_s: int = 10, keep_user_values: bool = True) -> Iterator[None]:
    """Bound MLflow's HTTP retries and timeout inside the block: its defaults (7 retries with
    exponential backoff, 120 s per try) spend minutes on a dead server. MLflow reads these
    variables on every request. The defaults are the mid-run bounds (a dead server costs
    seconds, then tracking is dropped), where a value the user exported wins."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update({k: v for k, v in wanted.items() if not (keep_user_values and saved[k] is not None)})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def warn(what: str, exc: BaseException) -> None:
    print(f"tracking: warning: {what} failed ({type(exc).__name__}: {str(exc)[:200]}); training continues",
          file=sys.stderr, flush=True)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"lora": {"r": 8}}`` -> ``{"lora.r": "8"}`` (lists as JSON), for MLflow params."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = (value if isinstance(value, str) else json.dumps(value))[:_PARAM_MAX]
    return out


@dataclass
class JobRun:
    """The driver's handle on one job's MLflow run (or none) and its TensorBoard folder."""

    target: TrackingTarget = field(default_factory=TrackingTarget)

    @classmethod
    def open(cls, settings: TrackingSettings, storage_path: str, run_dir: str, experiment: str,
             params: dict[str, str], tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> "JobRun":
        """Start the job's run, or reopen the one an earlier attempt of this job started."""
        target = TrackingTarget(tensorboard_dir=os.path.join(run_dir, "tensorboard") if settings.tensorboard else None)
        uri = settings.mlflow_uri(storage_path)
        if uri is None:
            return cls(target)
        target.mlflow_uri = uri
        try:
            target.run_id = _start_run(uri, settings.experiment or experiment, run_dir, params, tags or {}, parent_run_id)
        except Exception as exc:  # noqa: BLE001
            warn(f"opening an MLflow run at {uri}", exc)
        return cls(target)

    def finish(self, tags: dict[str, str], status: str = "FINISHED") -> None:
        if self.target.run_id is None:
            return
        try:
            with http_bounds():  # the server passed check_reachable, but may have gone since
                mlflow = client(self.target.mlflow_uri)
                for key, value in tags.items():
                    mlflow.set_tag(self.target.run_id, key, value)
                mlflow.set_terminated(self.target.run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            warn("closing the MLflow run", exc)


def _start_run(uri: str, experiment: str, run_dir: str, params: dict[str, str], tags: dict[str, str],
               parent_run_id: str | None) -> str:
    mlflow = client(uri)
    found = mlflow.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlflow.create_experiment(experiment)
    state_file = f"{run_dir}/tracking.json"
    previous = json.loads(read_text(state_file) or "{}")
    if previous.get("mlflow_uri") == uri and previous.get("run_id"):
        run_id = previous["run_id"]
        mlflow.update_run(run_id, status="RUNNING")
        known = mlflow.get_run(run_id).data.params
        params = {k: v for k, v in params.items() if k not in known}  # params are immutable once logged
    else:
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run_id = mlflow.create_run(experiment_id, run_name=os.path.basename(run_dir), tags=tags).info.run_id
        write_text(state_file, json.dumps({"mlflow_uri": uri, "run_id": run_id, "experiment": experiment}) + "\n")
    log_params(mlflow, run_id, params)
    return run_id


def log_params(mlflow, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow.log_batch(run_id, params=items[start:start + 100])


def now_ms() -> int:
    return int(time.time() * 1000)
