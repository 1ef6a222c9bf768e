"""Local task YAMLs for the output types beyond multiple choice, written here in full (no include):
a GSM8K-style generation task (``generate_until``, gsm8k's regex filters and exact_match), its
chat variant, and a wikitext-style perplexity task (``loglikelihood_rolling``), so the tests run
offline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

NAMES = ["Tom", "Ana", "Li", "Sam", "Eve", "Raj"]
THINGS = ["apples", "pens", "cups", "books"]


def math_docs(rng: random.Random, n: int) -> list[dict]:
    """Word problems with GSM8K's answer format: the working, then ``#### <number>``. Every other
    answer is 103, a number the tiny model likes to write, so exact_match is not 0 throughout."""
    docs = []
    for i in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        a = rng.randint(2, 40)
        b = 103 - a if i % 2 else rng.randint(2, 40)
        docs.append(
            {
                "question": f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have?",
                "answer": f"{name} has {a} + {b} = {a + b} {thing}.\n#### {a + b}",
            }
        )
    return docs


GSM8K_STYLE = {
    "output_type": "generate_until",
    "training_split": "train",
    "fewshot_split": "train",
    "test_split": "test",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{answer}}",
    "metric_list": [
        {
            "metric": "exact_match",
            "aggregation": "mean",
            "higher_is_better": True,
            "ignore_case": True,
            "ignore_punctuation": False,
            "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
        }
    ],
    "generation_kwargs": {"until": ["Question:", "</s>"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 24},
    "filter_list": [
        {
            "name": "strict-match",
            "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}],
        },
        {
            "name": "flexible-extract",
            "filter": [
                {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"},
            ],
        },
    ],
    "metadata": {"version": 1.0},
}


def write_gen_tasks(folder: Path, seed: int = 0) -> list[str]:
    """The data and YAMLs of ``local_gsm8k`` (plain prompts) and ``local_gsm8k_chat`` (same task,
    run with a chat template); returns their names."""
    rng = random.Random(seed)
    files = {}
    for split, n in (("train", 4), ("test", 8)):
        path = folder / f"gsm8k.{split}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in math_docs(rng, n)))
        files[split] = str(path)
    names = ["local_gsm8k", "local_gsm8k_chat"]
    for name in names:
        task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files}, **GSM8K_STYLE}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return names


def write_rolling_task(folder: Path) -> str:
    """``local_wikitext``: pages of the sample corpus's answers, one longer than the tiny model's
    512-token context (so it is scored in several windows), with wikitext's three metrics."""
    from platypus_ray.samples import sample_rows

    answers = [r["output"] for r in sample_rows() if r["output"].strip()]
    pages = [" ".join(answers[i : i + 3]) for i in range(0, 15, 3)] + ["\n\n".join(answers * 2)]
    path = folder / "wikitext.test.jsonl"
    path.write_text("".join(json.dumps({"page": p}) + "\n" for p in pages))
    task = {
        "task": "local_wikitext",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": "",
        "doc_to_target": "{{page}}",
        "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
        "metadata": {"version": 1.0},
    }
    (folder / "local_wikitext.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return "local_wikitext"
