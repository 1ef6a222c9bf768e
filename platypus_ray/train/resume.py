"""A rerun under an existing run name resumes its checkpoints, so it must be the same training problem."""

from __future__ import annotations

from typing import Any

import yaml

from platypus_ray.core.errors import UserError
from platypus_ray.core.outputs import mark_output
from platypus_ray.core.paths import is_remote, read_text, write_text
from platypus_ray.train.config import TrainConfig


def check_resumable(cfg: TrainConfig) -> None:
    """Same model, data formatting, LoRA shape, optimisation and worker count (ZeRO-3 shards
    are saved per rank) as the run already in the folder; max_steps/epochs may change: that
    extends or shortens the run. Reads only the folder's config.yaml (train's preflight, before Ray starts)."""
    run_dir = cfg.run.run_dir
    previous_text = read_text(f"{run_dir}/config.yaml")
    current = _fingerprint(cfg)
    if previous_text is not None:
        previous = _fingerprint(TrainConfig.model_validate(yaml.safe_load(previous_text)))
        changed = sorted(k for k in current if previous.get(k) != current[k])
        if changed:
            details = "; ".join(f"{k}: {previous.get(k)!r} -> {current[k]!r}" for k in changed)
            raise UserError(
                f"run '{cfg.run.name}' in {cfg.run.storage_path} was started with a different config ({details}); "
                "its checkpoints cannot be resumed with this one: use another run.name or remove the folder"
            )


def record_config(cfg: TrainConfig) -> None:
    """Write the resolved config (and the marker) for the next rerun's ``check_resumable``."""
    run_dir = cfg.run.run_dir
    write_text(f"{run_dir}/config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if not is_remote(run_dir):
        mark_output(run_dir, "train")


def _fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    t = cfg.training
    return {
        "model.name_or_path": cfg.model.name_or_path,
        "data.cutoff_len": cfg.data.cutoff_len,
        "data.train_on_inputs": cfg.data.train_on_inputs,
        "data.packing": cfg.data.packing,
        "lora": cfg.lora.model_dump(),
        "training.learning_rate": t.learning_rate,
        "training.global_batch_size": t.global_batch_size,
        "training.micro_batch_size": t.micro_batch_size,
        "training.scheduler": t.scheduler,
        "training.seed": t.seed,
        "deepspeed.stage": cfg.deepspeed.stage,
        "cluster.workers": cfg.cluster.workers,
    }
