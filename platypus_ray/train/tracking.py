"""Experiment tracking for train and sweep: one MLflow run per training job, TensorBoard files.

The driver opens the MLflow run (params: the resolved config flattened, and the plan) and
closes it (the adapter path as a tag); rank 0 alone logs per-step metrics into that run
(``TrackingCallback``), so a multi-worker job never becomes one run per worker. A rerun that
resumes a job reopens the same run (its id is kept in ``<run folder>/tracking.json``). A
sweep is a parent run with one child run per trial, all in one store. Every store is opened
(a server reached, a SQLite file created and migrated) before Ray starts, so an unusable URI
fails first; a logging failure mid-run is a warning and training goes on.

    mlflow ui --backend-store-uri sqlite:///$PWD/out/train/mlflow.db   # tracking.mlflow: true
    tensorboard --logdir out/train                                   # tracking.tensorboard: true
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import Field

from platypus_ray.core.config import StrictModel
from platypus_ray.core.errors import UserError
from platypus_ray.core.paths import is_remote, read_text, write_text

logger = logging.getLogger(__name__)

_PARAM_MAX = 6000  # MLflow's limit on a param value
T = TypeVar("T")


class TrackingSettings(StrictModel):
    """Where training metrics go besides ``metrics.jsonl``; off by default."""

    mlflow: bool | str = Field(
        False,
        description="true: a SQLite store at run.storage_path/mlflow.db; or a "
        "tracking URI (http://host:5000, sqlite:///path.db, file:/path)",
    )
    experiment: str | None = Field(None, description="the MLflow experiment; default: run.name")
    tensorboard: bool = Field(False, description="TensorBoard event files under <run folder>/tensorboard/ (rank 0)")

    def mlflow_uri(self, storage_path: str) -> str | None:
        """The tracking URI, or None when MLflow is off."""
        if self.mlflow is False:
            return None
        if self.mlflow is True:  # MLflow 3's default store: one file, what `mlflow ui` opens
            return "sqlite:///" + os.path.abspath(os.path.join(storage_path, "mlflow.db"))
        if "://" not in self.mlflow and not self.mlflow.startswith("file:"):
            return "file:" + os.path.abspath(self.mlflow)
        return self.mlflow


def remote_storage_problems(settings: TrackingSettings, storage_path: str) -> list[str]:
    """Config problems: local stores and event files need a local or shared-filesystem folder."""
    if not is_remote(storage_path):
        return []
    problems = []
    if settings.mlflow is True:
        problems.append(
            f"tracking.mlflow: true keeps its store under run.storage_path, which is remote "
            f"({storage_path}); give a tracking server URI (tracking.mlflow: http://host:5000)"
        )
    if settings.tensorboard:
        problems.append(
            f"tracking.tensorboard writes event files under run.storage_path, which is remote "
            f"({storage_path}); use a shared-filesystem path or turn it off"
        )
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


def client(uri: str | None):
    """An MLflow client; the file store (our ``mlflow: true``) is opted into explicitly."""
    if uri is None:  # a target with a run_id always has its store's URI
        raise ValueError("no MLflow tracking URI to open a client for")
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    return MlflowClient(uri)


def check_reachable(uri: str | None, timeout_s: float = 30) -> None:
    """Open the store now, before Ray starts: reach a server, create (and migrate) a SQLite file,
    read a file store. A URI that cannot be used fails here with what to change, not mid-run.
    Bounded: MLflow retries a database it cannot connect to for about 100 s."""
    if uri is None:
        return
    failure: list[BaseException] = []

    def probe() -> None:
        try:
            with http_bounds(retries=0, timeout_s=5, keep_user_values=False), quiet_store_logs():
                client(uri).search_experiments(max_results=1)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=probe, name="mlflow-store-check", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise UserError(
            f"tracking.mlflow: the store {uri} did not answer in {timeout_s:g} s; {_fix_for(uri, None)}"
        ) from None
    if failure:
        problem = "does not answer" if _is_server(uri) else "cannot be used"
        raise UserError(
            f"tracking.mlflow: {'the tracking server' if _is_server(uri) else 'the store'} {uri} "
            f"{problem} ({_reason(failure[0])}); {_fix_for(uri, failure[0])}"
        ) from None


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0][:200]


def _fix_for(uri: str, exc: BaseException | None) -> str:
    if _is_server(uri):
        return "start it, fix the URI, or set tracking.mlflow: true for a local SQLite store"
    if isinstance(exc, ImportError) or "Unsupported" in type(exc).__name__:
        return (
            "install the store's driver (SQLite needs sqlalchemy and alembic, which platypus-ray requires; "
            "PostgreSQL psycopg2, MySQL pymysql) or use tracking.mlflow: true"
        )
    return "check the path exists and is writable, fix the URI, or set tracking.mlflow: true"


@contextmanager
def quiet_store_logs() -> Iterator[None]:
    """MLflow's SQL store logs each schema migration step at INFO on first open: not the user's news."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def retry_locked(call: Callable[..., T], *args: Any, tries: int = 6, **kwargs: Any) -> T:
    """``call`` again (bounded, backing off) while SQLite says another trial holds the write lock:
    concurrent sweep trials share one file; SQLite's own 5 s wait can run out under a burst."""
    for attempt in range(tries):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if attempt == tries - 1 or "database is locked" not in str(exc):
                raise
            time.sleep(0.2 * 2**attempt + random.random() * 0.2)
    raise AssertionError("unreachable")


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
    logger.warning(
        "tracking: warning: %s failed (%s: %s); training continues", what, type(exc).__name__, str(exc)[:200]
    )


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
    def open(
        cls,
        settings: TrackingSettings,
        storage_path: str,
        run_dir: str,
        experiment: str,
        params: dict[str, str],
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> JobRun:
        """Start the job's run, or reopen the one an earlier attempt of this job started."""
        target = TrackingTarget(tensorboard_dir=os.path.join(run_dir, "tensorboard") if settings.tensorboard else None)
        uri = settings.mlflow_uri(storage_path)
        if uri is None:
            return cls(target)
        target.mlflow_uri = uri
        try:
            target.run_id = _start_run(
                uri, settings.experiment or experiment, run_dir, params, tags or {}, parent_run_id
            )
        except Exception as exc:  # noqa: BLE001 - tracking is best-effort: a failing store is one warning, the run continues
            warn(f"opening an MLflow run at {uri}", exc)
        return cls(target)

    def finish(self, tags: dict[str, str], status: str = "FINISHED") -> None:
        if self.target.run_id is None:
            return
        try:
            with http_bounds():  # the server passed check_reachable, but may have gone since
                mlflow = client(self.target.mlflow_uri)
                for key, value in tags.items():
                    retry_locked(mlflow.set_tag, self.target.run_id, key, value)
                retry_locked(mlflow.set_terminated, self.target.run_id, status=status)
        except Exception as exc:  # noqa: BLE001 - tracking is best-effort: a failing store is one warning, the run continues
            warn("closing the MLflow run", exc)


def _start_run(
    uri: str, experiment: str, run_dir: str, params: dict[str, str], tags: dict[str, str], parent_run_id: str | None
) -> str:
    mlflow = client(uri)
    experiment_id = _experiment_id(mlflow, uri, experiment)
    state_file = f"{run_dir}/tracking.json"
    previous = json.loads(read_text(state_file) or "{}")
    if previous.get("mlflow_uri") == uri and previous.get("run_id"):
        run_id = previous["run_id"]
        retry_locked(mlflow.update_run, run_id, status="RUNNING")
        known = mlflow.get_run(run_id).data.params
        params = {k: v for k, v in params.items() if k not in known}  # params are immutable once logged
    else:
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run_id = retry_locked(
            mlflow.create_run, experiment_id, run_name=os.path.basename(run_dir), tags=tags
        ).info.run_id
        write_text(state_file, json.dumps({"mlflow_uri": uri, "run_id": run_id, "experiment": experiment}) + "\n")
    log_params(mlflow, run_id, params)
    return run_id


def _experiment_id(mlflow, uri: str, name: str) -> str:
    """The experiment's id, created if new; a SQLite store's artifacts sit beside its file
    (MLflow's default, ./mlruns, is relative to whichever process creates the experiment)."""
    found = mlflow.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = "file:" + os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")), "mlartifacts")
    try:
        return retry_locked(mlflow.create_experiment, name, artifact_location=location)
    except Exception:
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def log_params(mlflow, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        retry_locked(mlflow.log_batch, run_id, params=items[start : start + 100])


def now_ms() -> int:
    return int(time.time() * 1000)
