"""Train benchmark: Ray Train + DeepSpeed ZeRO-3 (2 workers) vs one process of HF Trainer + PEFT.

    python -m platypus_ray.bench.train [--hidden 512] [--steps 30]
    python -m platypus_ray.bench.train --packed [--json FILE]      # the same, both sides packing their rows
    python -m platypus_ray.bench.train --packing [--json FILE]     # unpacked vs padded vs packed (bench/packing.py)

Same tiny LLaMA, same tokenised rows, same LoRA, same global batch and micro batch, same
cores. Throughput is non-pad tokens per second of optimizer-step time (logged every step,
the first ``--skip`` steps dropped), median over steps; both runs are measured in this run.
The model is big enough (hidden 512: 12.8M parameters) that compute, not ZeRO-3's fixed
per-module bookkeeping, dominates; at hidden 64 the ratio mostly measures that overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

DEFAULTS = {"hidden": 512, "intermediate": 1408, "layers": 4, "heads": 8, "kv_heads": 4}


def _baseline(
    model_dir: str,
    data_dir: str,
    steps: int,
    micro: int,
    accumulation: int,
    lr: float,
    cutoff: int = 256,
    packed: bool = False,
) -> list[float]:
    """One process, torch on every core, HF Trainer + PEFT LoRA, no Ray, no DeepSpeed. ``packed``:
    the rows packed by the same function and collate as ``data.packing: packed``."""
    import pyarrow.parquet as pq
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from platypus_ray.train.data import load_tokenizer, tokenize_batch
    from platypus_ray.train.packing import pack_batch
    from platypus_ray.train.worker import PackedCollate, PadCollate

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = load_tokenizer(model_dir)
    table = pq.read_table(data_dir).to_pydict()
    tokens = tokenize_batch(table, model_dir, cutoff, False, True)
    rows = pack_batch(tokens.to_pydict(), cutoff, seed=0).to_pylist() if packed else tokens.to_pylist()
    collate = (PackedCollate if packed else PadCollate)(tokenizer.pad_token_id)
    fields = ("input_ids", "labels", "position_ids") if packed else ("input_ids", "labels")

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, k):
            return rows[k]

    def collate_rows(batch):
        return collate({name: [r[name] for r in batch] for name in fields})

    speeds: list[float] = []

    class Speed(TrainerCallback):
        last = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            now = time.perf_counter()
            if "loss" in (logs or {}) and self.last is not None:
                speeds.append(trainer.tokens / (now - self.last))
            trainer.tokens, self.last = 0, now

    class CountingTrainer(Trainer):
        tokens = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            real = inputs.pop("real_tokens", None)  # packed batches carry their non-pad token count
            self.tokens += int(real) if real is not None else int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        LoraConfig(
            r=16,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_level="error",
    )
    trainer = CountingTrainer(model=model, args=args, train_dataset=Rows(), data_collator=collate_rows)
    trainer.add_callback(Speed())
    trainer.train()
    return speeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=DEFAULTS["hidden"])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (30; 8 with --packing)")
    parser.add_argument(
        "--skip", type=int, default=None, help="warm-up steps left out of the median (5; 2 with --packing)"
    )
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--packing", action="store_true", help="compare unpacked, padded and packed training instead")
    parser.add_argument(
        "--packed",
        action="store_true",
        help="Ray Train vs the single process with both packing their rows (micro batch 1, --cutoff)",
    )
    parser.add_argument("--cutoff", type=int, default=1024, help="cutoff_len of the --packing runs")
    parser.add_argument("--json", help="--packing or --packed: write the numbers to this file")
    parser.add_argument(
        "--source",
        default="../shared/data/alpaca_5000.json",
        help="--packing: Alpaca JSON rows (the shipped sample rows when absent)",
    )
    parser.add_argument("--rows", type=int, default=1000, help="--packing: rows taken from --source")
    args = parser.parse_args(argv)
    args.steps = args.steps or (8 if args.packing or args.packed else 30)
    args.skip = args.skip if args.skip is not None else (2 if args.packing or args.packed else 5)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import pyarrow as pa
    import pyarrow.parquet as pq

    from platypus_ray.devtools.tiny_model import TinyModelConfig
    from platypus_ray.devtools.tiny_model import run as make_model
    from platypus_ray.samples import sample_rows

    work = tempfile.mkdtemp(prefix="bench-train-")
    scale = args.hidden / DEFAULTS["hidden"]
    model_dir = str(
        make_model(
            TinyModelConfig(
                out=f"{work}/model",
                hidden_size=args.hidden,
                intermediate_size=int(DEFAULTS["intermediate"] * scale) // 8 * 8,
                layers=DEFAULTS["layers"],
                heads=DEFAULTS["heads"],
                kv_heads=DEFAULTS["kv_heads"],
                pretrain_steps=0,
            )
        ).out
    )
    data_dir = f"{work}/kept"
    os.makedirs(data_dir)
    rows = sample_rows()
    if (args.packing or args.packed) and os.path.isfile(args.source):
        import json

        with open(args.source) as handle:
            rows = [
                {k: r.get(k) or "" for k in ("instruction", "input", "output")} for r in json.load(handle)[: args.rows]
            ]
    pq.write_table(pa.Table.from_pylist(rows), f"{data_dir}/part-0.parquet")
    if args.packing:
        from platypus_ray.bench import packing

        numbers = packing.run_variants(model_dir, data_dir, work, args.steps, args.skip, args.cutoff)
        numbers["loss_max_abs_diff"] = packing.loss_max_abs_diff(model_dir, rows[:64], args.cutoff)
        packing.report(numbers, args.json)
        return 0
    return _versus_single_process(args, model_dir, data_dir, work, len(rows))


def _versus_single_process(args: argparse.Namespace, model_dir: str, data_dir: str, work: str, n_rows: int) -> int:
    """Ray Train + ZeRO-3 (2 workers) against one HF Trainer + PEFT process, measured in this run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from platypus_ray.core.config import validate_config
    from platypus_ray.train import TrainConfig, fit, prepare

    workers = 2
    lr = 1e-3
    cutoff = args.cutoff if args.packed else 256
    micro = 1 if args.packed else args.micro_batch  # a packed sequence is a micro batch

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        base_speeds = pool.submit(
            _baseline, model_dir, data_dir, args.steps, micro, args.global_batch // micro, lr, cutoff, args.packed
        ).result()

    cfg = validate_config(
        TrainConfig,
        {
            "model": {"name_or_path": model_dir},
            "data": {
                "path": data_dir,
                "val_size": 0,
                "cutoff_len": cutoff,
                "packing": "packed" if args.packed else "none",
            },
            "lora": {"r": 16, "alpha": 16, "dropout": 0.05, "target_modules": "mlp"},
            "training": {
                "learning_rate": lr,
                "scheduler": "constant",
                "warmup_steps": 0,
                "max_steps": args.steps,
                "global_batch_size": args.global_batch,
                "micro_batch_size": micro,
                "eval_every": args.steps,
                "logging_steps": 1,
            },
            "cluster": {"workers": workers, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
            "run": {"name": "bench", "storage_path": f"{work}/runs", "max_failures": 0},
        },
    )
    result = fit(prepare(cfg))
    ray_speeds = [h["tokens_per_s"] for h in result.history if "tokens_per_s" in h]

    base = statistics.median(base_speeds[args.skip :])
    ours = statistics.median(ray_speeds[args.skip : -1])  # the last interval includes the final checkpoint
    packing = f"packed to {cutoff} tokens, micro 1 sequence" if args.packed else f"padded, micro {micro}"
    print(
        f"train  tiny LLaMA hidden {args.hidden}, {n_rows} rows, global batch {args.global_batch}, {packing}, "
        f"{args.steps} steps, {os.cpu_count()} cores (median real tokens/s after {args.skip} steps)"
    )
    print(f"  HF Trainer + PEFT, 1 process x {os.cpu_count()} threads : {base:8.0f} tokens/s")
    print(f"  Ray Train + ZeRO-3, {workers} workers x 1 CPU    : {ours:8.0f} tokens/s")
    print(f"  ratio Ray+ZeRO-3 / baseline                 : {ours / base:8.2f}x  (target >= 0.8x)")
    if args.json:
        import json

        with open(args.json, "w") as handle:
            json.dump(
                {
                    "baseline": {
                        "packed": args.packed,
                        "cutoff_len": cutoff,
                        "micro_batch": micro,
                        "baseline_tokens_per_s": round(base, 1),
                        "ray_tokens_per_s": round(ours, 1),
                        "ratio": round(ours / base, 3),
                    }
                },
                handle,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
