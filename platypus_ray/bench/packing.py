"""Packing bench: the same rows trained three ways on Ray Train + ZeRO-3 (2 workers x 1 CPU).

    python -m platypus_ray.bench.train --packing [--json FILE] [--cutoff 1024] [--steps 8]

unpacked: micro batch 1 (the Platypus setting); padded: micro batches of 8 rows padded to
their longest; packed: micro batch 1 of sequences packed to ``cutoff_len``. Same model,
LoRA, cutoff, global batch (16) and cores, measured in this run. Throughput is real (non-pad)
tokens per second of optimizer-step time, median over steps after ``--skip``.
``loss_max_abs_diff``: per-row summed loss of packed sequences vs the same rows unpacked.
"""

from __future__ import annotations

import json
import statistics

VARIANTS = {"unpacked": (1, "none"), "padded": (8, "none"), "packed": (1, "packed")}


def run_variants(model_dir: str, data_dir: str, work: str, steps: int, skip: int, cutoff: int) -> dict:
    from platypus_ray.core.config import validate_config
    from platypus_ray.train import TrainConfig, fit, prepare

    speeds, plans = {}, {}
    for name, (micro, packing) in VARIANTS.items():
        cfg = validate_config(
            TrainConfig,
            {
                "model": {"name_or_path": model_dir},
                "data": {"path": data_dir, "val_size": 0, "cutoff_len": cutoff, "packing": packing},
                "lora": {"r": 16, "alpha": 16, "dropout": 0.05, "target_modules": "mlp"},
                "training": {
                    "learning_rate": 1e-3,
                    "scheduler": "constant",
                    "warmup_steps": 0,
                    "max_steps": steps,
                    "global_batch_size": 16,
                    "micro_batch_size": micro,
                    "eval_every": steps,
                    "logging_steps": 1,
                },
                "cluster": {"workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
                "run": {"name": f"bench-{name}", "storage_path": f"{work}/runs", "max_failures": 0},
            },
        )
        result = fit(prepare(cfg))
        values = [h["tokens_per_s"] for h in result.history if "tokens_per_s" in h]
        speeds[name] = statistics.median(values[skip:-1])  # the last interval includes the final checkpoint
        plans[name] = result.plan
    return {
        "unpacked_tokens_per_s": round(speeds["unpacked"], 1),
        "padded_tokens_per_s": round(speeds["padded"], 1),
        "packed_tokens_per_s": round(speeds["packed"], 1),
        "ratio_vs_unpacked": round(speeds["packed"] / speeds["unpacked"], 3),
        "ratio_vs_padded": round(speeds["packed"] / speeds["padded"], 3),
        "packing_efficiency": round(plans["packed"].packing_efficiency, 4),
        "steps_unpacked": plans["unpacked"].steps_per_epoch,
        "steps_packed": plans["packed"].steps_per_epoch,
    }


def loss_max_abs_diff(model_dir: str, rows: list[dict], cutoff: int) -> float:
    """Largest |packed - unpacked| per-row summed loss over the packed sequences of ``rows``."""
    import torch
    from transformers import AutoModelForCausalLM

    from platypus_ray.train.data import tokenize_batch
    from platypus_ray.train.packing import pack_batch

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = {k: [r[k] for r in rows] for k in ("instruction", "input", "output")}
    tokens = tokenize_batch(batch, model_dir, cutoff, True, True).to_pydict()
    alone = {tuple(ids): _row_loss(model, ids, labels)[0] for ids, labels in zip(tokens["input_ids"], tokens["labels"])}
    worst = 0.0
    for seq in pack_batch(tokens, cutoff, seed=0).to_pylist()[:4]:
        _, per_token = _row_loss(model, seq["input_ids"], seq["labels"], seq["position_ids"])
        starts = [i for i, p in enumerate(seq["position_ids"]) if p == 0] + [len(seq["input_ids"])]
        for start, end in zip(starts, starts[1:]):
            packed = float(per_token[start : end - 1].sum())
            worst = max(worst, abs(packed - alone[tuple(seq["input_ids"][start:end])]))
    return worst


def _row_loss(model, ids, labels, position_ids=None):
    import torch

    from platypus_ray.train.prompts import IGNORE_INDEX

    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor([ids]),
            use_cache=False,
            position_ids=None if position_ids is None else torch.tensor([position_ids]),
        ).logits[0]
    target = torch.tensor(labels[1:])
    losses = torch.nn.functional.cross_entropy(logits[:-1].double(), target.clamp(min=0), reduction="none")
    losses = torch.where(target == IGNORE_INDEX, torch.zeros_like(losses), losses)
    return float(losses.sum()), losses


def report(numbers: dict, json_path: str | None) -> None:
    print("packing  (real tokens/s, 2 Ray Train workers x 1 CPU, ZeRO-3, median after warm-up)")
    for name in VARIANTS:
        print(f"  {name:<9}: {numbers[f'{name}_tokens_per_s']:8.0f} tokens/s")
    print(f"  packed / unpacked : {numbers['ratio_vs_unpacked']:.2f}x  (target >= 1.0)")
    print(f"  packed / padded   : {numbers['ratio_vs_padded']:.2f}x  (target >= 1.3)")
    print(
        f"  packing efficiency: {numbers['packing_efficiency']:.3f}  steps/epoch {numbers['steps_unpacked']} -> "
        f"{numbers['steps_packed']}  loss max |diff| {numbers['loss_max_abs_diff']:.2e}"
    )
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"packing": numbers}, handle, indent=2)
