"""Trainer callbacks every worker adds: metrics and checkpoints to Ray, tracking on rank 0, fault drills."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

import ray.train
import torch
from transformers import TrainerCallback

from platypus_ray.core.log import progress_due
from platypus_ray.train.layout import CHECKPOINT_SUBDIR, INJECT_FAULT_ENV
from platypus_ray.train.tracking import TrackingTarget, client, http_bounds, now_ms, retry_locked, warn

logger = logging.getLogger(__name__)


class InjectedFault(TrainerCallback):
    """Raise once at ``step`` (a marker file remembers it across restarts): a worker crash on
    demand, to exercise FailureConfig restarts from the last checkpoint."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and not os.path.exists(self.marker):
            with open(self.marker, "w") as handle:
                handle.write(f"{self.step}\n")
            raise RuntimeError(f"injected fault at step {self.step} ({INJECT_FAULT_ENV})")


class ReportToRay(TrainerCallback):
    """Metrics (loss, eval_loss, learning rate, tokens/s over all ranks) to the console and to
    Ray; every saved checkpoint (and one at the last step) becomes a Ray Train checkpoint.

    Rank 0 logs a training line about every tenth of the run (:func:`~platypus_ray.core.log.progress_due`)
    and every evaluation; the rest at DEBUG. Every log is in the run's ``metrics.jsonl``.
    Ray Train V2's driver sees nothing of a run until ``fit`` returns, so the worker decides."""

    def __init__(self, trainer, rank: int, steps_per_epoch: int, static: dict[str, Any]):
        self.trainer, self.rank, self.steps_per_epoch, self.static = trainer, rank, steps_per_epoch, static
        self.metrics: dict[str, float] = {}
        self._last_tokens, self._last_time = 0, None
        self._last_shown: int | None = None  # the step of the last training line shown

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = self.trainer.tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True  # the final adapter is always in a checkpoint

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs if logs is not None else {}
        ours: dict[str, float] = {}
        if "epoch" in logs:  # the Trainer cannot know epochs of an endless stream; we do
            ours["epoch"] = round(state.global_step / self.steps_per_epoch, 3)
        if "loss" in logs:  # a training log: all ranks take part in the all-reduce
            now = time.perf_counter()
            tokens = torch.tensor([self.trainer.tokens_seen - self._last_tokens], dtype=torch.float64)
            torch.distributed.all_reduce(tokens)
            ours["tokens_per_s"] = round(float(tokens.item()) / max(now - self._last_time, 1e-9), 1)
            self._last_tokens, self._last_time = self.trainer.tokens_seen, now
        logs.update(ours)
        if state.log_history:  # the Trainer recorded its copy before calling us
            state.log_history[-1].update(ours)
        self.metrics.update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        self.metrics["step"] = state.global_step
        if self.rank == 0:
            shown = " ".join(f"{k} {v:.4g}" for k, v in logs.items() if isinstance(v, float))
            level = logging.DEBUG
            if "loss" not in logs or progress_due(state.global_step, state.max_steps, self._last_shown):
                level = logging.INFO
                if "loss" in logs:
                    self._last_shown = state.global_step
            logger.log(level, "[train] step %d/%d %s", state.global_step, state.max_steps, shown)

    def on_save(self, args, state, control, **kwargs):
        torch.distributed.barrier()  # every rank has written its shard of the checkpoint
        source = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        with tempfile.TemporaryDirectory() as tmp:
            _copy_rank_files(source, os.path.join(tmp, CHECKPOINT_SUBDIR), self.rank)
            ray.train.report(
                {**self.static, **self.metrics, "step": state.global_step},
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint_{state.global_step:06d}",
            )


def _copy_rank_files(source: str, target: str, rank: int) -> None:
    """Rank 0 uploads the whole checkpoint; other ranks only their own ZeRO shards and RNG
    state, so nodes without a shared filesystem still assemble a complete checkpoint."""
    if rank == 0:
        shutil.copytree(source, target)
        return
    for root, _, files in os.walk(source):
        for name in files:
            if f"rank_{rank}_" in name or name == f"rng_state_{rank}.pth":
                relative = os.path.relpath(os.path.join(root, name), source)
                os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
                shutil.copy2(os.path.join(root, name), os.path.join(target, relative))


class TrackingCallback(TrainerCallback):
    """Rank 0 only: every log (loss, learning rate, grad norm, eval metrics, tokens/s) to the
    job's MLflow run and to TensorBoard event files. A failing backend is dropped with one
    warning; training goes on. MLflow's HTTP retries are bounded, so a dead server costs seconds."""

    def __init__(self, target: TrackingTarget):
        self.target = target
        self.mlflow = self.writer = None
        if target.run_id:
            try:
                self.mlflow = client(target.mlflow_uri)
            except Exception as exc:  # noqa: BLE001 - tracking is best-effort: a failing store is one warning, training continues
                warn(f"connecting to MLflow at {target.mlflow_uri}", exc)
        if target.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=target.tensorboard_dir)
            except Exception as exc:  # noqa: BLE001 - tracking is best-effort: a failing store is one warning, training continues
                warn(f"opening TensorBoard event files in {target.tensorboard_dir}", exc)

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = {
            k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.mlflow is not None:
            from mlflow.entities import Metric

            try:
                stamp = now_ms()
                with http_bounds():
                    retry_locked(
                        self.mlflow.log_batch,
                        self.target.run_id,
                        metrics=[Metric(k, v, stamp, state.global_step) for k, v in values.items()],
                    )
            except Exception as exc:  # noqa: BLE001 - tracking is best-effort: a failing store is one warning, training continues
                warn("logging to MLflow", exc)
                self.mlflow = None
        if self.writer is not None:
            try:
                for key, value in values.items():
                    self.writer.add_scalar(key, value, state.global_step)
                self.writer.flush()
            except Exception as exc:  # noqa: BLE001 - tracking is best-effort: a failing store is one warning, training continues
                warn("writing TensorBoard events", exc)
                self.writer = None

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as exc:  # noqa: BLE001 - tracking is best-effort: a failing store is one warning, training continues
                warn("closing the TensorBoard event files", exc)
            self.writer = None
