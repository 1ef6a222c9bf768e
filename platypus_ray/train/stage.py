"""``platypus-ray train``: LoRA on Ray Train with DeepSpeed ZeRO-3; the driver side.

Plans and checks the run, tokenises the data in Ray Data, builds the ``TorchTrainer``,
and after ``fit`` exports the adapter and the metric history next to the checkpoints.
A rerun with the same ``run.name`` and ``run.storage_path`` resumes from the latest
checkpoint (Ray Train restores its checkpoint list; the workers resume the Hugging Face
state from it: weights, optimizer, scheduler, data position).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
import ray.train
import yaml
from ray.train.torch import TorchConfig, TorchTrainer

from platypus_ray.errors import UserError
from platypus_ray.paths import absolute_if_local, is_remote, read_text, write_text
from platypus_ray.runtime import init_ray
from platypus_ray.train.adapter import check_adapter, export_adapter
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.data import TokenizedData, prepare_data
from platypus_ray.train.deepspeed_config import deepspeed_config
from platypus_ray.train.plan import TrainPlan, model_size
from platypus_ray.train.worker import CHECKPOINT_SUBDIR, INJECT_FAULT_ENV, train_loop_per_worker


TrainConfigT = TypeVar("TrainConfigT", bound=TrainConfig)


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

    def summary(self) -> str:
        losses = [h["loss"] for h in self.history if "loss" in h]
        evals = [h["eval_loss"] for h in self.history if "eval_loss" in h]
        lines = [f"train: {self.metrics.get('step')} steps in {self.wall_s:.0f} s on "
                 f"{self.metrics.get('world_size', '?')} workers across {self.metrics.get('nodes', '?')} node(s)"]
        if losses:
            lines.append(f"  loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        if evals:
            lines.append(f"  eval_loss {evals[0]:.4f} -> {evals[-1]:.4f}")
        speeds = [h["tokens_per_s"] for h in self.history if "tokens_per_s" in h]
        if speeds:
            lines.append(f"  tokens/s (all workers) median {sorted(speeds)[len(speeds) // 2]:.0f}")
        lines += [f"  adapter     {self.adapter_path}", f"  checkpoint  {self.checkpoint_path}",
                  f"  metrics     {self.run_dir}/metrics.jsonl"]
        return "\n".join(lines)


def run(cfg: TrainConfig, callbacks: list | None = None, data: TokenizedData | None = None) -> TrainResult:
    """Train a LoRA adapter. ``callbacks`` go to ``RunConfig`` (Ray Tune passes its reporter);
    ``data`` is tokenised data prepared once by a sweep driver for all of its trials."""
    start = time.perf_counter()
    cfg = resolve_local_paths(cfg)
    size = model_size(cfg)  # meta device: cheap even for 70B; checked again once the data is counted
    run_dir = cfg.run.run_dir
    init_ray()
    check_cluster_fits(cfg)
    data = data or prepare_data(cfg)
    plan = TrainPlan(cfg, size, data.train_rows, data.validation_rows, data.train_tokens, data.dropped_rows)
    print(plan.render(), flush=True)
    plan.check()

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "deepspeed": deepspeed_config(cfg.deepspeed, on_gpu=cfg.cluster.use_gpu),
            "total_steps": plan.total_steps,
            "steps_per_epoch": plan.steps_per_epoch,
            "train_rows": data.train_rows,
            "has_validation": data.validation is not None,
            # Fault-injection hook for tests and drills: the last rank raises once at this step.
            "inject_fault_at_step": int(os.environ.get(INJECT_FAULT_ENV, 0)) or None,
            "fault_marker": os.path.join(run_dir, ".injected-fault"),
            "scratch_dir": os.path.join(tempfile.gettempdir(), "platypus-ray", f"{cfg.run.name}-{uuid.uuid4().hex[:8]}"),
        },
        torch_config=TorchConfig(backend="nccl" if cfg.cluster.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.cluster.workers,
            use_gpu=cfg.cluster.use_gpu,
            resources_per_worker=cfg.cluster.resources_per_worker,
            placement_strategy=cfg.cluster.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures,
                                                   controller_failure_limit=cfg.run.placement_retries),
            callbacks=callbacks,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # progress comes from the [train] lines
        ),
        datasets={"train": data.train, **({"validation": data.validation} if data.validation is not None else {})},
    )
    _check_resumable(run_dir, cfg)
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")

    history = _history(result.checkpoint)
    adapter_path = export_adapter(result.checkpoint, cfg.run.adapter_path)
    check_adapter(adapter_path)
    _write_run_files(run_dir, history, dict(result.metrics))
    return TrainResult(
        run_dir=run_dir,
        adapter_path=adapter_path,
        checkpoint_path=f"{result.checkpoint.path}/{CHECKPOINT_SUBDIR}",
        metrics=dict(result.metrics),
        history=history,
        plan=plan,
        wall_s=time.perf_counter() - start,
    )


def resolve_local_paths(cfg: TrainConfigT) -> TrainConfigT:
    """Workers start in their own folder: hand them absolute paths for local inputs and storage."""
    cfg = cfg.model_copy(deep=True)
    cfg.model.name_or_path = absolute_if_local(cfg.model.name_or_path)
    if not is_remote(cfg.data.path):
        cfg.data.path = os.path.abspath(cfg.data.path)
    if not is_remote(cfg.run.storage_path):
        cfg.run.storage_path = os.path.abspath(cfg.run.storage_path)
    return cfg


def check_cluster_fits(cfg: TrainConfig) -> None:
    """On a fixed cluster (the local one), a worker group that can never be placed is an error
    now, not a hang; on a remote cluster the autoscaler may still add nodes, so only warn."""
    available = ray.cluster_resources()
    short = {
        name: (need * cfg.cluster.workers, available.get(name, 0))
        for name, need in cfg.cluster.resources_per_worker.items()
        if need * cfg.cluster.workers > available.get(name, 0)
    }
    if not short:
        return
    detail = ", ".join(f"{name}: needs {need:g}, has {have:g}" for name, (need, have) in short.items())
    if os.environ.get("RAY_ADDRESS"):
        print(f"train: waiting for the autoscaler; the cluster is short of {detail}", flush=True)
        return
    raise UserError(
        f"cluster: {cfg.cluster.workers} workers x {cfg.cluster.resources_per_worker} do not fit this Ray "
        f"instance ({detail}); on a laptop use e.g. --set cluster.workers=2 --set cluster.use_gpu=false "
        "--set cluster.resources_per_worker.CPU=1 (and drop GPU), or run on the cluster (see README)"
    )


def _history(checkpoint: ray.train.Checkpoint) -> list[dict[str, Any]]:
    """Every logged metric of the run, from the Hugging Face trainer state in the last checkpoint."""
    with checkpoint.as_directory() as folder:
        state = json.loads(Path(folder, CHECKPOINT_SUBDIR, "trainer_state.json").read_text())
    return state.get("log_history", [])


def _check_resumable(run_dir: str, cfg: TrainConfig) -> None:
    """A rerun under an existing name resumes its checkpoints, so it must be the same training
    problem: same model, data formatting, LoRA shape, optimisation and worker count (ZeRO-3
    shards are saved per rank). max_steps/epochs may change: that extends or shortens the run."""
    previous_text = read_text(f"{run_dir}/config.yaml")
    current = _resume_fingerprint(cfg)
    if previous_text is not None:
        previous = _resume_fingerprint(TrainConfig.model_validate(yaml.safe_load(previous_text), context={"on_worker": True}))
        changed = sorted(k for k in current if previous.get(k) != current[k])
        if changed:
            details = "; ".join(f"{k}: {previous.get(k)!r} -> {current[k]!r}" for k in changed)
            raise UserError(
                f"run '{cfg.run.name}' in {cfg.run.storage_path} was started with a different config ({details}); "
                "its checkpoints cannot be resumed with this one: use another run.name or remove the folder"
            )
    write_text(f"{run_dir}/config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _resume_fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    t = cfg.training
    return {
        "model.name_or_path": cfg.model.name_or_path,
        "data.cutoff_len": cfg.data.cutoff_len,
        "data.train_on_inputs": cfg.data.train_on_inputs,
        "lora": cfg.lora.model_dump(),
        "training.learning_rate": t.learning_rate,
        "training.global_batch_size": t.global_batch_size,
        "training.micro_batch_size": t.micro_batch_size,
        "training.scheduler": t.scheduler,
        "training.seed": t.seed,
        "deepspeed.stage": cfg.deepspeed.stage,
        "cluster.workers": cfg.cluster.workers,
    }


def _write_run_files(run_dir: str, history: list[dict[str, Any]], final: dict[str, Any]) -> None:
    write_text(f"{run_dir}/metrics.jsonl", "".join(json.dumps(entry) + "\n" for entry in history))
    write_text(f"{run_dir}/result.json", json.dumps(final, indent=2))  # last report: step, losses, worker placement
