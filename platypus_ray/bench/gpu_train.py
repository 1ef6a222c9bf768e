"""GPU-kit steps on the train stage: LoRA through Ray Train + ZeRO-3, and the packed attention path.

train: the train stage's own ``prepare``/``fit`` (Ray Train, DeepSpeed ZeRO-3, PEFT LoRA on
gate/up/down, r 16, bf16, 1 GPU) on LLaMA models built from a ``LlamaConfig`` with random
weights (throughput does not depend on them), on the carried Alpaca rows, packed into 4096-token
sequences and with packing off. Reported per run: median real tokens/s over the steps after the
first 5 (the last one holds the checkpoint), peak GPU memory (nvidia-smi, whole device), and MFU:

    MFU = tokens/s x (4 N + 12 L d s) / 989e12

with N the model's parameters, L layers, d hidden size, s the mean context a token attends to
(half the mean row length: causal attention confined to its row). 4 N: LoRA's convention (forward
2 N, backward through the frozen weights 2 N, no weight gradients); 12 L d s: QK^T and AV,
forward and backward; 989e12: dense bf16 of an H100/H200 SXM (datasheet). The adapter saved under
ZeRO-3 must be non-empty (``check_adapter``) and reload onto its base with PEFT.

attention: per-row mean token loss of packed sequences (position ids restart per row, no mask)
against the same rows alone, for each attention implementation: the one the GPU config uses
(flash-attention 2, train/worker.py) when it is installed, and PyTorch's ``sdpa``.
"""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path
from typing import Any, TypedDict

from platypus_ray.bench.gpu_env import (
    PeakGpuMemory,
    StepSettings,
    alpaca_rows,
    local_ray,
    record_partial,
    shared_tokenizer,
)


class LlamaShape(TypedDict):
    """The LlamaConfig fields a benchmark size sets."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int


SIZES: dict[str, LlamaShape] = {  # LlamaConfig fields: TinyLlama-1.1B's and Llama-3-8B's shapes; "tiny" for the dry run
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    },
    "8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
    },
}
PEAK_BF16_FLOPS = 989e12


def build_model(folder: Path, size: str, device: str, tokenizer_path: str) -> int:
    """A random-weight LLaMA of ``size`` saved with the kit's tokenizer; returns its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        **SIZES[size],
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    with torch.device(device):  # initialised on the GPU: an 8B init on the CPU takes minutes
        model = LlamaForCausalLM(config).to(dtype)  # type: ignore[arg-type]  # typeshed: a wraps()'d .to binds no self
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return params


def _config(s: StepSettings, model: Path, data: Path, name: str, packed: bool):
    from platypus_ray.core.config import validate_config
    from platypus_ray.train import TrainConfig

    gpu = not s.dry_run
    return validate_config(
        TrainConfig,
        {
            "model": {"name_or_path": str(model), "dtype": "bfloat16" if gpu else "float32"},
            "data": {
                "path": str(data),
                "val_size": 0,
                "cutoff_len": 4096 if gpu else 256,
                "packing": "packed" if packed else "none",
            },
            "lora": {"r": 16, "alpha": 16, "dropout": 0.05, "target_modules": "mlp"},
            "training": {
                "learning_rate": 1e-4,
                "scheduler": "constant",
                "warmup_steps": 0,
                "max_steps": s.train_steps,
                "global_batch_size": 4 if gpu else 2,
                "micro_batch_size": 1,
                "eval_every": s.train_steps,
                "logging_steps": 1,
            },
            "cluster": {
                "workers": 1,
                "use_gpu": gpu,
                "resources_per_worker": {"GPU": 1, "CPU": 8} if gpu else {"CPU": 1},
                "gpus_per_node": 1,
                **({"memory_per_worker_gb": 139} if gpu else {}),
            },
            "run": {"name": name, "storage_path": f"{s.work}/runs", "max_failures": 0},
        },
    )


def _reloads(model: Path, adapter: str, device: str) -> bool:
    """The saved adapter loads onto its base with PEFT and its LoRA weights arrive non-zero."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    placed = base.to(device)  # type: ignore[arg-type]  # typeshed: a wraps()'d .to binds no self
    loaded = PeftModel.from_pretrained(placed, adapter)
    lora_b = [p for name, p in loaded.named_parameters() if "lora_B" in name]
    return bool(lora_b) and any(bool(p.abs().sum() > 0) for p in lora_b)


def _one_run(s: StepSettings, model: Path, data: Path, size: str, packed: bool, params: int) -> dict:
    from platypus_ray.core.errors import UserError
    from platypus_ray.train import fit, prepare
    from platypus_ray.train.adapter import check_adapter

    name = f"{size}-{'packed' if packed else 'unpacked'}"
    try:
        with PeakGpuMemory() as memory:
            result = fit(prepare(_config(s, model, data, name, packed)))
    except UserError as exc:  # the project's own refusal (e.g. no flash-attention for packed GPU runs)
        return {"run": name, "status": "refused", "error": str(exc)}
    speeds = [h["tokens_per_s"] for h in result.history if "tokens_per_s" in h]
    speed = statistics.median(speeds[5:-1] if len(speeds) > 7 else speeds)
    plan = result.plan
    shape = SIZES[size]
    context = plan.train_tokens / max(plan.train_rows, 1) / 2  # mean tokens a token attends to, per-row causal
    flops_per_token = 4 * params + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * context
    shapes = check_adapter(result.adapter_path)
    return {
        "run": name,
        "status": "ok",
        "params": params,
        "steps": len(speeds),
        "tokens_per_s": round(speed, 1),
        "peak_gpu_memory_gib": memory.peak_gib,
        "mfu": float(f"{speed * flops_per_token / PEAK_BF16_FLOPS:.4g}"),
        "flops_per_token": round(flops_per_token),
        "packing_efficiency": round(plan.packing_efficiency, 4),
        "adapter_tensors": len(shapes),
        "wall_s": round(result.wall_s, 1),
        "adapter_reloads": _reloads(model, result.adapter_path, s.device) if size != "8b" else None,
    }


def train_step(s: StepSettings) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = Path(s.work) / "kept"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(alpaca_rows(s.data, 200 if s.dry_run else None)), data / "part-0.parquet")
    runs = []
    with local_ray(0 if s.dry_run else 1):
        for size in ("tiny",) if s.dry_run else s.train_sizes:
            model = Path(s.work) / f"model-{size}"
            params = build_model(model, size, s.device, shared_tokenizer(s.work))
            for packed in (True, False):
                runs.append(_one_run(s, model, data, size, packed, params))
                record_partial(s.work, "train", runs[-1])  # kept if a later run outlasts the step's limit
    return {"runs": runs, "mfu_formula": "tokens/s x (4 N + 12 L d s) / 989e12", "sizes": list(s.train_sizes)}


def _row_losses(model, sequences: list[dict], device: str) -> list[list[float]]:
    """Per-row mean token loss of each sequence (rows split where position ids restart)."""
    import torch

    from platypus_ray.train.prompts import IGNORE_INDEX

    out = []
    for seq in sequences:
        ids = torch.tensor([seq["input_ids"]], device=device)
        positions = torch.tensor([seq["position_ids"]], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0].float()
        target = torch.tensor(seq["labels"][1:], device=device)
        losses = torch.nn.functional.cross_entropy(logits[:-1], target.clamp(min=0), reduction="none")
        counted = target != IGNORE_INDEX
        starts = [i for i, p in enumerate(seq["position_ids"]) if p == 0] + [len(seq["input_ids"])]
        rows = []
        for start, end in zip(starts, starts[1:]):
            part = slice(start, end - 1)
            rows.append(float(losses[part][counted[part]].mean()) if counted[part].any() else 0.0)
        out.append(rows)
    return out


def attention_step(s: StepSettings) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from platypus_ray.train.data import tokenize_batch
    from platypus_ray.train.packing import pack_batch

    folder = shared_tokenizer(s.work)
    cutoff = 512 if s.dry_run else 4096
    rows = alpaca_rows(s.data, 48 if s.dry_run else 256)
    tokens = tokenize_batch({k: [r[k] for r in rows] for k in rows[0]}, folder, cutoff, True, True).to_pydict()
    packed = pack_batch(tokens, cutoff, seed=0).to_pylist()[:4]
    dtype = torch.float32 if s.dry_run else torch.bfloat16
    shape: LlamaShape = {**SIZES["tiny" if s.dry_run else "1b"], "num_hidden_layers": 2 if s.dry_run else 4}
    has_flash = importlib.util.find_spec("flash_attn") is not None
    impls = ["eager", "sdpa"] if s.dry_run else ["flash_attention_2", "sdpa"] if has_flash else ["sdpa"]
    out: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "sequences": len(packed),
        "cutoff": cutoff,
        "gpu_config_uses": "flash_attention_2",
        "flash_attn_installed": has_flash,
        "impls": {},
    }
    torch.manual_seed(0)
    with torch.device(s.device):
        built = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=4096))
        model = built.to(dtype).eval()  # type: ignore[arg-type]  # typeshed: a wraps()'d .to binds no self
    for impl in impls:
        model.set_attn_implementation(impl)
        together = _row_losses(model, packed, s.device)
        alone = [
            [
                _row_losses(model, [_alone(seq, start, end)], s.device)[0][0]
                for start, end in _spans(seq["position_ids"])
            ]
            for seq in packed
        ]
        worst = max(abs(a - b) for seq_a, seq_b in zip(together, alone) for a, b in zip(seq_a, seq_b))
        out["impls"][impl] = {
            "rows": sum(map(len, together)),
            "max_abs_row_loss_diff": round(worst, 6),
            "within_1e-3": worst <= 1e-3,
        }
    return out


def _spans(positions: list[int]) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return list(zip(starts, starts[1:]))


def _alone(seq: dict, start: int, end: int) -> dict:
    """One row of a packed sequence as its own sequence (its first label is already -100)."""
    return {name: seq[name][start:end] for name in ("input_ids", "labels", "position_ids")}
