"""Benchmark items as log-likelihood requests, formatted as lm-evaluation-harness does.

Each multiple-choice item becomes one request per choice: a ``context`` (few-shot examples,
then the item's prompt) and a ``continuation`` (the choice) whose summed log-probability the
model is asked for. Prompts per format:

- ``mmlu_csv``: ``The following are multiple choice questions (with answers) about <subject>.``,
  then ``<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:``; the choices are the letters
  `` A`` .. `` D`` (the subject is the file name, e.g. ``high_school_us_history_test``).
- ``arc_jsonl``, ``questions``: ``Question: <question>\\nAnswer:`` and `` <choice text>``.
- ``hellaswag_jsonl``: the context, then `` <ending>``.
- ``truthfulqa_csv`` (MC1: the best answer against the incorrect ones): ``Q: <question>\\nA:``
  and `` <answer>``.

Few-shot examples are drawn per item with a seeded RNG keyed by the item id (so the draw
does not depend on order or on ``limit``), from ``fewshot_path`` when given, else from the
benchmark's own labelled items excluding the item itself; each is the prompt plus its gold
choice, separated by a blank line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from platypus_ray.benchmarks import BenchmarkConfig, BenchmarkItem

MMLU_LETTERS = "ABCD"


@dataclass(frozen=True)
class Skipped:
    benchmark: str
    item_id: str
    reason: str


def prompt_and_choices(item: BenchmarkItem, fmt: str) -> tuple[str, list[str]]:
    """The item's own prompt (no few-shot, no header) and its continuations."""
    if fmt == "mmlu_csv":
        lines = [item.question.strip()] + [f"{MMLU_LETTERS[i]}. {c.strip()}" for i, c in enumerate(item.choices)]
        return "\n".join(lines) + "\nAnswer:", [f" {MMLU_LETTERS[i]}" for i in range(len(item.choices))]
    if fmt == "hellaswag_jsonl":
        return item.question.strip(), [f" {c.strip()}" for c in item.choices]
    if fmt == "truthfulqa_csv":
        return f"Q: {item.question.strip()}\nA:", [f" {c.strip()}" for c in item.choices]
    return f"Question: {item.question.strip()}\nAnswer:", [f" {c.strip()}" for c in item.choices]


def mmlu_subject(item_id: str) -> str:
    """``mmlu/high_school_us_history_test:3`` -> ``high school us history``."""
    stem = item_id.split("/", 1)[-1].rsplit(":", 1)[0]
    return re.sub(r"_(test|dev|val|validation)$", "", stem).replace("_", " ")


def header(item: BenchmarkItem, fmt: str) -> str:
    if fmt == "mmlu_csv":
        return f"The following are multiple choice questions (with answers) about {mmlu_subject(item.id)}.\n\n"
    return ""


def fewshot_examples(item: BenchmarkItem, pool: Sequence[BenchmarkItem], k: int, seed: int) -> list[BenchmarkItem]:
    """``k`` labelled examples from ``pool``, never ``item`` itself; the same for the same item and seed."""
    if k == 0:
        return []
    rng = random.Random(f"{seed}:{item.id}")
    draw = rng.sample(range(len(pool)), min(k + 1, len(pool)))
    shots = [pool[i] for i in draw if pool[i].id != item.id][:k]
    if len(shots) < k:
        raise ValueError(f"{item.benchmark}: {k}-shot needs at least {k + 1} labelled items, the pool has {len(pool)}")
    return shots


def context_for(item: BenchmarkItem, fmt: str, shots: list[BenchmarkItem]) -> str:
    parts = []
    for shot in shots:
        prompt, choices = prompt_and_choices(shot, fmt)
        parts.append(prompt + choices[shot.answer] + "\n\n")
    prompt, _ = prompt_and_choices(item, fmt)
    return header(item, fmt) + "".join(parts) + prompt


def benchmark_requests(cfg: BenchmarkConfig, items: list[BenchmarkItem], pool: list[BenchmarkItem] | None,
                       seed: int) -> tuple[list[dict], list[Skipped]]:
    """Request rows for the scorable items (an answer and >= 2 choices) and the skipped ones."""
    labelled = [i for i in items if _scorable(i)]
    pool = [i for i in (pool if pool is not None else labelled) if _scorable(i)]
    rows, skipped = [], []
    for item in items[: cfg.limit] if cfg.limit else items:
        if not _scorable(item):
            skipped.append(Skipped(cfg.benchmark_name, item.id, "no answer" if item.answer is None else "fewer than 2 choices"))
            continue
        context = context_for(item, cfg.format, fewshot_examples(item, pool, cfg.num_fewshot, seed))
        _, choices = prompt_and_choices(item, cfg.format)
        for index, continuation in enumerate(choices):
            rows.append({"benchmark": cfg.benchmark_name, "item_id": item.id, "choice": index, "answer": item.answer,
                         "context": context, "continuation": continuation, "add_eos": False, "move_space": True})
    return rows, skipped


def _scorable(item: BenchmarkItem) -> bool:
    return item.answer is not None and len(item.choices) >= 2 and 0 <= item.answer < len(item.choices)


def validation_requests(rows: list[dict], add_eos: bool) -> list[dict]:
    """Held-out rows as the train stage formats them: the Alpaca prompt is the context, the output
    (plus EOS) the continuation, so the loss is exactly the masked training loss."""
    from platypus_ray.train.prompts import build_prompt

    return [{"benchmark": "validation", "item_id": str(row.get("id", i)), "choice": 0, "answer": 0,
             "context": build_prompt(row["instruction"], row.get("input") or ""), "continuation": row["output"],
             "add_eos": add_eos, "move_space": False}
            for i, row in enumerate(rows)]
