"""``platypus-ray train``: LoRA on Ray Train with DeepSpeed ZeRO-3; the driver side.

Two steps, used by the CLI, ``jobs/``, the pipeline and every sweep trial alike:
``prepare(cfg)`` checks paths, the tracking server and the cluster, tokenises the data in
Ray Data and prints the plan (no training); ``fit(job, callbacks=...)`` builds the
``TorchTrainer``, trains, and exports the adapter and the metric history next to the
checkpoints. A rerun with the same ``run.name`` and ``run.storage_path`` resumes from the
latest checkpoint (Ray Train restores its checkpoint list; the workers resume the Hugging
Face state from it: weights, optimizer, scheduler, data position).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from platypus_ray.core.devices import train_backend
from platypus_ray.core.errors import UserError
from platypus_ray.core.paths import absolute_if_local, is_remote, write_text
from platypus_ray.core.runtime import init_ray
from platypus_ray.core.stage import Input, Output, Stage
from platypus_ray.train.adapter import check_adapter, export_adapter
from platypus_ray.train.capacity import check_cluster_fits
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.data import TokenizedData, prepare_data
from platypus_ray.train.deepspeed_config import deepspeed_config
from platypus_ray.train.layout import CHECKPOINT_SUBDIR, INJECT_FAULT_ENV
from platypus_ray.train.plan import TrainPlan, WorkerPlan, model_size
from platypus_ray.train.resume import check_resumable, record_config
from platypus_ray.train.tracking import JobRun, check_reachable, flatten

logger = logging.getLogger(__name__)

TrainConfigT = TypeVar("TrainConfigT", bound=TrainConfig)
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train passes it on to its controller


@dataclass
class TrainJob:
    """A checked, planned training job: what ``fit`` runs."""

    cfg: TrainConfig
    data: TokenizedData
    plan: TrainPlan
    worker: WorkerPlan
    tracking_parent: str | None = None  # MLflow run id of a sweep: this job's run becomes its child
    tracking_tags: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


@dataclass
class TrainResult:
    """Where the adapter and checkpoints are, and how training went."""

    run_dir: str
    adapter_path: str
    checkpoint_path: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    plan: TrainPlan | None = None
    wall_s: float = 0.0
    mlflow_run_id: str | None = None

    def summary(self) -> str:
        losses = [h["loss"] for h in self.history if "loss" in h]
        evals = [h["eval_loss"] for h in self.history if "eval_loss" in h]
        lines = [
            f"train: {self.metrics.get('step')} steps in {self.wall_s:.0f} s on "
            f"{self.metrics.get('world_size', '?')} workers across {self.metrics.get('nodes', '?')} node(s)"
        ]
        if losses:
            lines.append(f"  loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        if evals:
            lines.append(f"  eval_loss {evals[0]:.4f} -> {evals[-1]:.4f}")
        speeds = [h["tokens_per_s"] for h in self.history if "tokens_per_s" in h]
        if speeds:
            lines.append(f"  tokens/s (all workers) median {sorted(speeds)[len(speeds) // 2]:.0f}")
        lines += [
            f"  adapter     {self.adapter_path}",
            f"  checkpoint  {self.checkpoint_path}",
            f"  metrics     {self.run_dir}/metrics.jsonl",
        ]
        if self.mlflow_run_id:
            lines.append(f"  mlflow run  {self.mlflow_run_id}")
        return "\n".join(lines)


class TrainStage(Stage[TrainConfig, None, TrainResult]):
    """The base model and refined rows in; a run folder (checkpoints, adapter, metrics) out."""

    name = "train"
    config = TrainConfig

    def inputs(self, cfg: TrainConfig) -> list[Input]:
        return train_inputs(cfg)

    def outputs(self, cfg: TrainConfig) -> list[Output]:
        return [Output("run.storage_path", cfg.run.run_dir)]

    def check(self, cfg: TrainConfig, planned: frozenset[str]) -> None:
        """A rerun in the run folder is the same training problem; the tracking store answers."""
        check_resumable(resolve_local_paths(cfg))
        check_reachable(cfg.tracking.mlflow_uri(cfg.run.storage_path))

    def check_cluster(self, cfg: TrainConfig) -> None:
        init_ray()
        check_cluster_fits(cfg.cluster)

    def execute(self, cfg: TrainConfig, checked: None) -> TrainResult:
        """Train a LoRA adapter: ``fit(plan_job(cfg))``."""
        return fit(plan_job(cfg))


def train_inputs(cfg: TrainConfig) -> list[Input]:
    """What a train run reads: the base model, the refined rows, a DeepSpeed config file and a chat
    template file (sweep too)."""
    found = [
        Input("model.name_or_path", cfg.model.name_or_path, "model"),
        Input("data.path", cfg.data.path, "path", hint="run `platypus-ray refine` first or point to a Parquet folder"),
    ]
    if cfg.deepspeed.config_file:
        found.append(Input("deepspeed.config_file", cfg.deepspeed.config_file, "file"))
    if cfg.data.chat_template_file:
        found.append(
            Input("data.chat_template", cfg.data.chat_template_file, "file", hint="Jinja text or a .jinja file")
        )
    return found


STAGE = TrainStage()
run = STAGE.run


def prepare(
    cfg: TrainConfig,
    data: TokenizedData | None = None,
    tracking_parent: str | None = None,
    tracking_tags: dict[str, str] | None = None,
) -> TrainJob:
    """Preflight and plan a job; no training (each sweep trial calls this, then :func:`fit`)."""
    STAGE.preflight(cfg)
    return plan_job(cfg, data, tracking_parent, tracking_tags)


def plan_job(
    cfg: TrainConfig,
    data: TokenizedData | None = None,
    tracking_parent: str | None = None,
    tracking_tags: dict[str, str] | None = None,
) -> TrainJob:
    """Plan a job that passed preflight: tokenise in Ray Data and print the plan. ``data``:
    tokenised rows a sweep driver prepared once for all of its trials; ``tracking_parent`` /
    ``tracking_tags``: the sweep's MLflow run and the trial's overrides."""
    started = time.perf_counter()
    cfg = resolve_local_paths(cfg)
    size = model_size(cfg)  # meta device: cheap even for 70B
    data = data or prepare_data(cfg)
    plan = TrainPlan.for_data(cfg, size, data)
    logger.info("%s", plan.render())
    plan.check()
    record_config(cfg)
    run_dir = cfg.run.run_dir
    worker = WorkerPlan(
        config=cfg.model_dump(mode="json"),
        deepspeed=deepspeed_config(cfg.deepspeed, on_gpu=cfg.cluster.use_gpu),
        total_steps=plan.total_steps,
        steps_per_epoch=plan.steps_per_epoch,
        train_rows=data.train_rows,
        has_validation=data.validation is not None,
        chat_template=data.chat_template,
        scratch_dir=os.path.join(tempfile.gettempdir(), "platypus-ray", f"{cfg.run.name}-{uuid.uuid4().hex[:8]}"),
        fault_marker=os.path.join(run_dir, ".injected-fault"),
        inject_fault_at_step=int(os.environ.get(INJECT_FAULT_ENV, 0)) or None,
    )
    return TrainJob(cfg, data, plan, worker, tracking_parent, dict(tracking_tags or {}), started)


def _finished(cfg: TrainConfig, total_steps: int) -> ray.train.Result | None:
    """The result of an earlier attempt of this run that already reached ``total_steps``: a
    rerun then starts no worker group (it would load the model only to train nothing)."""
    try:
        result = ray.train.Result.from_path(cfg.run.run_dir)
    except RuntimeError:  # no run folder yet, or no checkpoint registered in it
        return None
    metrics = result.metrics or {}  # Ray types them Optional: a run folder without reported metrics is unfinished
    if result.checkpoint is None or int(metrics.get("step") or 0) < total_steps:
        return None
    logger.info(
        "train: %s already finished at step %s; nothing to train (a new run.name trains again)",
        cfg.run.name,
        metrics["step"],
    )
    return result


def fit(job: TrainJob, callbacks: list | None = None) -> TrainResult:
    """Train a prepared job. ``callbacks`` go to ``RunConfig`` (Ray Tune passes its reporter)."""
    cfg, data = job.cfg, job.data
    tracker = JobRun.open(
        cfg.tracking,
        cfg.run.storage_path,
        cfg.run.run_dir,
        cfg.run.name,
        {**flatten(cfg.model_dump(mode="json")), **job.plan.params()},
        job.tracking_tags,
        job.tracking_parent,
    )
    job.worker.tracking = tracker.target
    if cfg.run.placement_timeout_s is not None:
        os.environ[START_TIMEOUT_ENV] = str(cfg.run.placement_timeout_s)
    trainer = TorchTrainer(
        functools.partial(train_loop_per_worker, job.worker),
        torch_config=TorchConfig(backend=train_backend(cfg.cluster.use_gpu)),  # gloo for simulated GPUs (devices.py)
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.cluster.workers,
            use_gpu=cfg.cluster.use_gpu,
            resources_per_worker=cfg.cluster.resources_per_worker,
            placement_strategy=cfg.cluster.placement_strategy,
        ),
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]  # V2's (Ray's default); mypy sees V1's class
            name=cfg.run.name,
            storage_path=cfg.run.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]  # V2's, as RunConfig
                max_failures=cfg.run.max_failures, controller_failure_limit=cfg.run.placement_retries
            ),
            callbacks=callbacks,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # progress comes from the [train] lines
        ),
        datasets={"train": data.train, **({"validation": data.validation} if data.validation is not None else {})},
    )
    try:
        try:
            result = _finished(cfg, job.plan.total_steps) or trainer.fit()  # fit raises the run's TrainingFailedError
        except Exception as exc:
            clear = placement_error(exc, cfg)
            if clear is None:
                raise
            raise clear from exc
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        if result.metrics is None:
            raise RuntimeError("training finished without metrics")
        history = _history(result.checkpoint)
        adapter_path = export_adapter(result.checkpoint, cfg.run.adapter_path)
        check_adapter(adapter_path)
    except BaseException:
        if job.tracking_parent is None:
            tracker.finish({}, status="FAILED")
        raise
    _write_run_files(cfg.run.run_dir, history, dict(result.metrics))
    if job.tracking_parent is None:  # a sweep closes its trials' runs: Tune may end this process mid-write
        tracker.finish({"adapter_path": adapter_path, "final_step": str(result.metrics.get("step"))})
    return TrainResult(
        run_dir=cfg.run.run_dir,
        adapter_path=adapter_path,
        checkpoint_path=f"{result.checkpoint.path}/{CHECKPOINT_SUBDIR}",
        metrics=dict(result.metrics),
        history=history,
        plan=job.plan,
        wall_s=time.perf_counter() - job.started,
        mlflow_run_id=tracker.target.run_id,
    )


def placement_error(error: BaseException, cfg: TrainConfig) -> UserError | None:
    """Ray Train gave up placing the worker group (each try releases its placement group):
    say so in the job's own terms instead of a controller traceback."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    if not isinstance(getattr(error, "controller_failure", None), WorkerGroupStartupTimeoutError):
        return None
    timeout = os.environ.get(START_TIMEOUT_ENV, "60")
    tries = cfg.run.placement_retries + 1
    return UserError(
        f"train: run '{cfg.run.name}' could not place its worker group ({cfg.cluster.workers} x "
        f"{cfg.cluster.resources_per_worker}) in {tries} tries of {float(timeout):g} s: other work holds the "
        "resources (Ray released this run's reservations after each try); free them, or raise "
        "run.placement_retries / run.placement_timeout_s"
    )


def resolve_local_paths(cfg: TrainConfigT) -> TrainConfigT:
    """Workers start in their own folder: hand them absolute paths for local inputs and storage."""

    def local(path: str) -> str:
        return path if is_remote(path) else os.path.abspath(path)

    return cfg.model_copy(
        deep=True,
        update={
            "model": cfg.model.model_copy(update={"name_or_path": absolute_if_local(cfg.model.name_or_path)}),
            "data": cfg.data.model_copy(
                update={
                    "path": local(cfg.data.path),
                    **({"chat_template": local(cfg.data.chat_template_file)} if cfg.data.chat_template_file else {}),
                }
            ),
            "run": cfg.run.model_copy(update={"storage_path": local(cfg.run.storage_path)}),
        },
    )


def train_loop_per_worker(plan: WorkerPlan) -> None:
    """Imported lazily: the worker module pulls in torch and transformers."""
    from platypus_ray.train.worker import train_loop_per_worker as loop

    loop(plan)


def _history(checkpoint: ray.train.Checkpoint) -> list[dict[str, Any]]:
    """Every logged metric of the run, from the Hugging Face trainer state in the last checkpoint."""
    with checkpoint.as_directory() as folder:
        state = json.loads(Path(folder, CHECKPOINT_SUBDIR, "trainer_state.json").read_text())
    return state.get("log_history", [])


def _write_run_files(run_dir: str, history: list[dict[str, Any]], final: dict[str, Any]) -> None:
    write_text(f"{run_dir}/metrics.jsonl", "".join(json.dumps(entry) + "\n" for entry in history))
    write_text(f"{run_dir}/result.json", json.dumps(final, indent=2))  # last report: step, losses, worker placement
