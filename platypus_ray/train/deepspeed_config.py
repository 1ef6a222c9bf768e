"""The DeepSpeed config handed to ``TrainingArguments(deepspeed=...)``, built from the typed config.

Batch sizes, clipping and precision are ``auto``: the Hugging Face integration fills them
from ``TrainingArguments``, so there is one source of truth. No ``optimizer`` block: the
Trainer creates torch AdamW and its cosine schedule, which works on CPU and GPU alike and
keeps optimizer state in ZeRO-3 partitions (with optimizer offload, DeepSpeed's CPU Adam).
"""

from __future__ import annotations

import json
from typing import Any

from platypus_ray.train.config import DeepSpeedSettings


def deepspeed_config(settings: DeepSpeedSettings, on_gpu: bool) -> dict[str, Any]:
    """A ZeRO config dict; a user-supplied ``config_file`` replaces it whole."""
    if settings.config_file:
        with open(settings.config_file) as handle:
            return json.load(handle)
    zero: dict[str, Any] = {
        "stage": settings.stage,
        "overlap_comm": on_gpu,  # helps with NCCL streams; measured no gain (and extra memory) over gloo
        "contiguous_gradients": on_gpu,
        "reduce_bucket_size": "auto",
    }
    if settings.stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # Save consolidated weights: LoRA adapters saved from partitioned params are empty.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
        if settings.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config: dict[str, Any] = {}
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
        # Offloaded state needs DeepSpeed's CPU Adam (JIT-built on first use), not a client optimizer.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config | {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31,
        "wall_clock_breakdown": False,
    }
