"""Task YAMLs over local files, in the shapes of the Open LLM Leaderboard tasks: each includes
lm-eval's own YAML (its prompts, preprocessing, few-shot sampler and metrics) and swaps only the
data for JSONL this module writes, so the tests run offline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

WORDS = ["amber", "basil", "cedar", "delta", "ember", "flint", "grove", "heron", "ivory", "jolly", "karma", "lemon"]


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _phrase(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def mmlu_docs(rng: random.Random, n: int) -> list[dict]:
    return [
        {
            "question": f"Which word opens vault {rng.randrange(100)}?",
            "subject": "security",
            "choices": [_phrase(rng, rng.randint(1, 3)) for _ in range(4)],
            "answer": rng.randrange(4),
        }
        for _ in range(n)
    ]


def arc_docs(rng: random.Random, n: int) -> list[dict]:
    """Choices of very different lengths (one word to six): where acc and acc_norm part."""
    docs = []
    for i in range(n):
        k = rng.choice([3, 4, 5])
        labels = list("ABCDE"[:k]) if i % 2 else [str(j + 1) for j in range(k)]
        docs.append(
            {
                "id": f"arc-{i}",
                "question": f"What grows beside the {_phrase(rng, 2)}?",
                "choices": {"text": [_phrase(rng, rng.choice([1, 2, 6])) for _ in range(k)], "label": labels},
                "answerKey": rng.choice(labels),
            }
        )
    return docs


def hellaswag_docs(rng: random.Random, n: int) -> list[dict]:
    """WikiHow-style contexts with the bracket artifacts lm-eval's preprocessing removes."""
    return [
        {
            "ind": i,
            "activity_label": f"Making {rng.choice(WORDS)} tea",
            "ctx_a": f"[title] Boil the {_phrase(rng, 2)}.",
            "ctx_b": f"then add {rng.choice(WORDS)}",
            "ctx": "",
            "endings": [f"[step] {_phrase(rng, rng.randint(1, 4))}." for _ in range(4)],
            "source_id": "wikihow~1",
            "split": "val",
            "split_type": "indomain",
            "label": str(rng.randrange(4)),
        }
        for i in range(n)
    ]


def truthfulqa_docs(rng: random.Random, n: int) -> list[dict]:
    docs = []
    for _ in range(n):
        choices = [_phrase(rng, rng.randint(1, 4)) for _ in range(rng.choice([3, 4, 5]))]
        true = rng.randint(1, len(choices) - 1)
        docs.append(
            {
                "question": f"Is the {rng.choice(WORDS)} vault open?",
                "mc1_targets": {"choices": choices, "labels": [1] + [0] * (len(choices) - 1)},
                "mc2_targets": {"choices": choices, "labels": [1] * true + [0] * (len(choices) - true)},
            }
        )
    return docs


FEWSHOT = 3


def write_tasks(folder: Path, seed: int = 0) -> dict[str, int]:
    """Write the data and YAMLs: a 0-shot and a FEWSHOT-shot variant of each style (TruthfulQA's YAML
    pins 0 shots: one variant). Returns task name -> its shots."""
    rng = random.Random(seed)
    lm_tasks = lm_eval_tasks_dir()
    data = {
        "mmlu": {"test": mmlu_docs(rng, 6), "dev": mmlu_docs(rng, 5)},
        "arc": {"train": arc_docs(rng, 6), "validation": arc_docs(rng, 2), "test": arc_docs(rng, 16)},
        "hellaswag": {"train": hellaswag_docs(rng, 5), "validation": hellaswag_docs(rng, 6)},
        "truthfulqa": {"validation": truthfulqa_docs(rng, 6)},
    }
    includes = {
        "mmlu": lm_tasks / "mmlu/default/_default_template_yaml",
        "arc": lm_tasks / "arc/arc_challenge.yaml",
        "hellaswag": lm_tasks / "hellaswag/hellaswag.yaml",
        "truthfulqa": lm_tasks / "truthfulqa/truthfulqa_mc2.yaml",
    }
    shots = {"mmlu": FEWSHOT, "arc": FEWSHOT, "hellaswag": FEWSHOT, "truthfulqa": 0}
    tasks = {}
    for style, splits in data.items():
        files = {split: _jsonl(folder / f"{style}.{split}.jsonl", docs) for split, docs in splits.items()}
        for variant in ["0", "fs"] if shots[style] else ["0"]:
            name = f"local_{style}_{variant}"
            config = {
                "include": str(includes[style]),
                "task": name,
                "tag": [],
                "dataset_path": "json",
                "dataset_name": None,
                "dataset_kwargs": {"data_files": files},
            }
            if style == "mmlu":
                config["description"] = "The following are multiple choice questions (with answers) about security.\n\n"
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            tasks[name] = shots[style] if variant == "fs" else 0
    return tasks


def run_outputs(result, cfg, out: Path) -> dict:
    """What the parity tests compare from one of our evaluate runs: its summary of the model's
    benchmarks, its lm-eval-style sample records per task, and items.parquet."""
    import pandas as pd

    label = cfg.model.display_name
    samples = {
        path.stem.removeprefix("samples_"): [json.loads(line) for line in path.read_text().splitlines()]
        for path in (out / "samples" / label).glob("samples_*.jsonl")
    }
    return {
        "summary": result.summary_data["models"][label]["benchmarks"],
        "samples": samples,
        "items": pd.read_parquet(out / "items.parquet"),
    }
