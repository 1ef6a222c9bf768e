"""Evaluate benchmark: lm-eval's own HF model loop vs this project's Ray Data pool, same requests.

    python -m platypus_ray.bench.evaluate [--items 400] [--shots 5] [--hidden 256] [--json FILE]
    python -m platypus_ray.bench.evaluate --case generation [--items 64] [--shots 3] [--max-gen-toks 32]

``--case generation``: lm-eval's own ``gsm8k`` YAML (its prompt, stop strings, regex filters and
exact_match; ``max_gen_toks`` capped) over local word problems, greedy ``generate_until`` on both
sides with the same batch size; the oracle is the generated strings themselves (how many are
identical) and exact_match of each filter. Prints documents/s of each side (the untrained model
rarely meets a stop string: most documents get ``--max-gen-toks`` new tokens).

Both sides run the same lm-eval task (a benchmark file turned into a task YAML by the evaluate
stage: the shipped sample quiz, the real-data case, plus ``--items`` generated questions with
choices of 1 to 8 words) on the same tiny LLaMA (``--hidden`` wide, untrained: speed only), on
2 CPUs: ``lm_eval.simple_evaluate`` with its ``hf`` model (batch size auto, torch on 2 threads,
the model loaded before the clock starts; its batch-size probe runs inside the clock, as in
every lm-eval run with auto; ``--lm-eval-batch-size 16`` times it without the probe) and the evaluate stage
with 2 actors of 1 CPU on a 2-CPU local Ray (its clock includes starting the actors and loading one model in each). The
outside oracle: the per-item log-likelihoods of the two sides must agree (max difference printed)
and so must acc and acc_norm. Prints documents/s of each and the ratio, with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from platypus_ray.bench.machine import cpu_model

WORDS = ["amber", "basil", "cedar", "delta", "ember", "flint", "grove", "heron", "ivory", "jolly", "karma", "lemon"]
SAMPLE_QUIZ = Path(__file__).resolve().parent.parent / "samples" / "benchmark.jsonl"


def write_questions(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.choice([2, 3, 4, 5])
        rows.append(
            {
                "id": f"g{i}",
                "question": f"Which {' '.join(rng.choices(WORDS, k=rng.randint(3, 12)))} comes next?",
                "choices": [" ".join(rng.choices(WORDS, k=rng.randint(1, 8))) for _ in range(k)],
                "answer": rng.randrange(k),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def entries(folder: Path, items: int, shots: int) -> list[dict]:
    write_questions(folder / "generated.jsonl", items)
    return [
        {"path": str(SAMPLE_QUIZ), "format": "questions", "name": "sample_quiz", "num_fewshot": shots},
        {"path": str(folder / "generated.jsonl"), "format": "questions", "name": "generated", "num_fewshot": shots},
    ]


def generation_entries(folder: Path, items: int, shots: int, max_gen_toks: int) -> list[dict]:
    """lm-eval's gsm8k task over ``items`` local word problems (GSM8K's answer format)."""
    import lm_eval.tasks
    import yaml

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", max(shots, 1) * 2), ("test", items)):
        rows = []
        for _ in range(n):
            a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
            rows.append(
                {
                    "question": f"A shop sells {a} pens in the morning and {b} in the afternoon, in boxes of {c}. "
                    "How many pens does it sell?",
                    "answer": f"It sells {a} + {b} = {a + b} pens.\n#### {a + b}",
                }
            )
        files[split] = str(folder / f"gsm8k.{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    task: dict[str, object] = {
        "include": str(Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml"),
        "task": "bench_gsm8k",
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
        "generation_kwargs": {
            "until": ["Question:", "</s>", "<|im_end|>"],
            "do_sample": False,
            "temperature": 0.0,
            "max_gen_toks": max_gen_toks,
        },
    }
    (folder / "bench_gsm8k.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return [{"task": "bench_gsm8k", "num_fewshot": shots, "include_path": str(folder)}]


def compare_generation(reference: dict, output: Path, label: str) -> dict:
    """Identical generated strings, and exact_match per filter on both sides."""
    theirs = reference["samples"]["bench_gsm8k"]
    path = output / "samples" / label / "samples_bench_gsm8k.jsonl"
    ours = {(s["doc_id"], s["filter"]): s for s in map(json.loads, path.read_text().splitlines())}
    first = [s for s in theirs if s["filter"] == "strict-match"]
    same = sum(s["resps"] == ours[(s["doc_id"], s["filter"])]["resps"] for s in first)
    metrics = {}
    for name in sorted({s["filter"] for s in theirs}):
        mine = [o["exact_match"] for (_, f), o in ours.items() if f == name]
        metrics[f"exact_match,{name}"] = (
            round(float(reference["results"]["bench_gsm8k"][f"exact_match,{name}"]), 4),
            round(sum(mine) / len(mine), 4),
        )
    return {"bench_gsm8k": {"docs": len(first), "identical_generations": same, **metrics}}


def run_lm_eval(model_dir: str, cfg, folder: Path, batch_size: str) -> tuple[float, dict]:
    """lm-eval's hf loop on the task YAMLs the evaluate stage writes for the same entries."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from platypus_ray.evaluate.config import TaskEntry
    from platypus_ray.evaluate.tasks import load_tasks

    torch.set_num_threads(2)
    loaded = load_tasks(cfg.benchmarks, cfg.seed, folder)  # writes the YAMLs (file entries) into folder
    folders = [str(folder)] + [e.include_path for e in cfg.benchmarks if isinstance(e, TaskEntry) and e.include_path]
    lm = HFLM(pretrained=model_dir, dtype="float32", device="cpu", batch_size=batch_size)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=loaded.lm_names,
        task_manager=TaskManager(include_path=folders),
        num_fewshot=cfg.benchmarks[0].num_fewshot,
        log_samples=True,
    )
    return time.perf_counter() - start, out


def run_pool(cfg, temp_dir: Path) -> tuple[float, object]:
    import ray

    from platypus_ray.evaluate import run

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        _temp_dir=str(temp_dir),
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        start = time.perf_counter()
        result = run(cfg)
        return time.perf_counter() - start, result
    finally:
        ray.shutdown()


def compare(reference: dict, output: Path, label: str) -> dict:
    """Max |log-likelihood difference| and the acc/acc_norm of both sides, per task."""
    out = {}
    for task, samples in reference["samples"].items():
        ours = {
            s["doc_id"]: s
            for s in map(json.loads, (output / "samples" / label / f"samples_{task}.jsonl").read_text().splitlines())
        }
        diff = max(
            abs(float(a[0]) - float(b[0]))
            for s in samples
            for a, b in zip(s["filtered_resps"], ours[s["doc_id"]]["filtered_resps"])
        )
        metrics = {
            m: (
                round(float(reference["results"][task][f"{m},none"]), 4),
                round(sum(float(o[m]) for o in ours.values()) / len(ours), 4),
            )
            for m in ("acc", "acc_norm")
        }
        out[task] = {"docs": len(samples), "max_abs_loglik_diff": diff, "lm_eval_vs_pool": metrics}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platypus_ray.bench.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=["choice", "generation"], default="choice")
    parser.add_argument("--items", type=int, help="documents (choice: 400 generated + the sample quiz; generation: 64)")
    parser.add_argument("--shots", type=int, help="few-shot examples (choice: 5, generation: 3)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--max-gen-toks", type=int, default=32, help="generation: new tokens per document at most")
    parser.add_argument("--batch-size", type=int, default=16, help="the pool's sequences per forward pass")
    parser.add_argument(
        "--lm-eval-batch-size",
        default="auto",
        help="lm-eval's batch_size: auto (the issue's baseline; its probe runs inside the clock) or N",
    )
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args(argv)
    generation = args.case == "generation"
    items = args.items if args.items is not None else (64 if generation else 400)
    shots = args.shots if args.shots is not None else (3 if generation else 5)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from platypus_ray.core.config import validate_config
    from platypus_ray.devtools import tiny_model
    from platypus_ray.evaluate import EvaluateConfig

    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        root = Path(tmp)
        model_dir = str(
            tiny_model.run(
                tiny_model.TinyModelConfig(
                    out=str(root / "model"),
                    hidden_size=args.hidden,
                    intermediate_size=args.hidden * 11 // 4,
                    layers=4,
                    heads=8,
                    kv_heads=4,
                    pretrain_steps=0,
                )
            ).out
        )
        benchmarks = (
            generation_entries(root / "gen", items, shots, args.max_gen_toks)
            if generation
            else entries(root, items, shots)
        )
        cfg = validate_config(
            EvaluateConfig,
            {
                "model": {"name_or_path": model_dir, "label": "pool"},
                "output": str(root / "eval"),
                "benchmarks": benchmarks,
                "inference": {"actors": 2, "cpus_per_actor": 1, "batch_size": args.batch_size, "device": "cpu"},
            },
        )
        lm_eval_s, reference = run_lm_eval(model_dir, cfg, root / "tasks", args.lm_eval_batch_size)
        pool_s, _ = run_pool(cfg, root / "ray")
        checks = (compare_generation if generation else compare)(reference, root / "eval", "pool")
    report(args, shots, checks, reference, lm_eval_s, pool_s)
    return 0


def report(args, shots: int, checks: dict, reference: dict, lm_eval_s: float, pool_s: float) -> None:
    docs = sum(c["docs"] for c in checks.values())
    numbers = {
        "case": args.case,
        "cpu": cpu_model(),
        "cores_used": 2,
        "docs": docs,
        "requests": sum(  # one record per (document, filter): count the first filter's
            len(s["arguments"]) for v in reference["samples"].values() for s in v if s["filter"] == v[0]["filter"]
        ),
        "num_fewshot": shots,
        "hidden": args.hidden,
        "lm_eval_hf": {
            "batch_size": args.lm_eval_batch_size,
            "wall_s": round(lm_eval_s, 2),
            "docs_per_s": round(docs / lm_eval_s, 2),
        },
        "ray_data_pool": {"actors": 2, "wall_s": round(pool_s, 2), "docs_per_s": round(docs / pool_s, 2)},
        "ratio_pool_vs_lm_eval": round(lm_eval_s / pool_s, 3),
        "checks": checks,
    }
    if args.case == "generation":
        numbers["max_gen_toks"] = args.max_gen_toks
    print(
        f"bench.evaluate ({args.case}): {docs} documents ({numbers['requests']} requests), {shots}-shot, "
        f"hidden {args.hidden}, 2 CPUs of {numbers['cpu']}"
    )
    for key, name in (
        ("lm_eval_hf", f"lm-eval hf loop (batch {args.lm_eval_batch_size}, 2 threads)"),
        ("ray_data_pool", "Ray Data pool (2 actors x 1 CPU)"),
    ):
        side = numbers[key]
        print(f"  {name:42}: {side['docs_per_s']:8.2f} docs/s ({side['wall_s']:.1f} s)")
    print(
        f"  ratio pool / lm-eval: {numbers['ratio_pool_vs_lm_eval']:.2f}x "
        "(the pool's clock includes actor start and model loads)"
    )
    for task, check in checks.items():
        print(f"  {task}: {json.dumps({k: v for k, v in check.items() if k != 'docs'})}")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    sys.exit(main())
