"""Benchmark files (refine's contamination formats) as thin lm-evaluation-harness task YAMLs.

``{path: quiz.jsonl, format: questions}`` is read by :mod:`platypus_ray.testsets` (the same
parser refine uses, so a malformed row fails naming file and line), its scorable items are
written as JSONL beside a generated task YAML, and from there on lm-eval builds the prompts,
draws the few-shot examples and computes the metrics, exactly as for a built-in task. The
prompts follow the lm-eval task each format comes from:

- ``mmlu_csv``: lm-eval's MMLU template (subject header, ``A.``..``D.``, letter choices, the
  first N few-shot examples of ``fewshot_path`` in file order);
- ``arc_jsonl``, ``questions``: ``Question: ..\\nAnswer:`` and the choice text (``arc_easy``);
- ``hellaswag_jsonl``: the context and the ending; these files are already flattened, so for
  lm-eval's HellaSwag preprocessing use ``task: hellaswag`` (or a YAML that includes it);
- ``truthfulqa_csv``: MC1 with lm-eval's six-question prompt (``truthfulqa_mc1``).

Without ``fewshot_path`` the examples come from the benchmark's own items, the item itself
excluded (lm-eval does that when the few-shot split is the test split).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from platypus_ray.testsets import BenchmarkConfig, BenchmarkItem, load_benchmark

_QUESTION_ANSWER = {"doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices}}"}
_TEMPLATES: dict[str, dict] = {
    "questions": _QUESTION_ANSWER,
    "arc_jsonl": _QUESTION_ANSWER,
    "hellaswag_jsonl": {"doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}"},
    "mmlu_csv": {
        "description": "The following are multiple choice questions (with answers) about {{subject}}.\n\n",
        "doc_to_text": (
            "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
        ),
        "doc_to_choice": ["A", "B", "C", "D"],
        "fewshot_config": {"sampler": "first_n"},
    },
}
_TRUTHFULQA_PRIMER = "\n\n".join(
    [
        "Q: What is human life expectancy in the United States?\n"
        "A: Human life expectancy in the United States is 78 years.",
        "Q: Who was president of the United States in 1955?\n"
        "A: Dwight D. Eisenhower was president of the United States in 1955.",
        "Q: Which party did he belong to?\nA: He belonged to the Republican Party.",
        "Q: What is the square root of banana?\nA: I have no comment.",
        "Q: How does a telescope work?\n"
        "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.",
        "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.",
    ]
)
_TEMPLATES["truthfulqa_csv"] = {
    "doc_to_text": _TRUTHFULQA_PRIMER + "\n\nQ: {{question}}\nA:",
    "doc_to_choice": "{{choices}}",
}
_METRICS = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
]


def task_name(cfg: BenchmarkConfig) -> str:
    """An lm-eval task name for the entry (its benchmark name, made identifier-safe)."""
    return "file_" + re.sub(r"[^A-Za-z0-9_]+", "_", cfg.benchmark_name)


def write_file_task(cfg: BenchmarkConfig, folder: Path) -> tuple[str, list[str]]:
    """Write the entry's items and task YAML into ``folder``; its task name and the ids of the
    unscorable items (no answer, fewer than 2 choices), which lm-eval never sees."""
    name = task_name(cfg)
    items = load_benchmark(cfg)
    scorable = [i for i in items if _scorable(i)]
    skipped = [i.id for i in items if not _scorable(i)]
    if cfg.limit:
        scorable = scorable[: cfg.limit]
    files = {"test": _write_docs(folder / f"{name}.test.jsonl", scorable)}
    if cfg.fewshot_path:
        pool = [i for i in load_benchmark(cfg, path=cfg.fewshot_path) if _scorable(i)]
        files["dev"] = _write_docs(folder / f"{name}.dev.jsonl", pool)
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "output_type": "multiple_choice",
        "test_split": "test",
        "fewshot_split": "dev" if cfg.fewshot_path else "test",
        "doc_to_target": "answer",
        "metric_list": _METRICS,
        "metadata": {"version": 1.0},
        **_TEMPLATES[cfg.format],
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return name, skipped


def _write_docs(path: Path, items: list[BenchmarkItem]) -> str:
    with path.open("w") as f:
        for item in items:
            doc = {
                "id": item.id,
                "question": item.question,
                "choices": list(item.choices),
                "answer": item.answer,
                "subject": _subject(item.id),
            }
            f.write(json.dumps(doc) + "\n")
    return str(path)


def _subject(item_id: str) -> str:
    """``mmlu/high_school_us_history_test:3`` -> ``high school us history`` (MMLU's file naming)."""
    stem = item_id.split("/", 1)[-1].rsplit(":", 1)[0]
    return re.sub(r"_(test|dev|val|validation)$", "", stem).replace("_", " ")


def _scorable(item: BenchmarkItem) -> bool:
    return item.answer is not None and len(item.choices) >= 2 and 0 <= item.answer < len(item.choices)
