"""Benchmark test sets (MMLU, ARC, HellaSwag, TruthfulQA, generic questions) as uniform items.

The refine stage embeds them to find contaminated training rows; the evaluate stage scores
models on the same items. Files are read by the one reader (``core/readers.py``), as training
sources are: JSON, JSON Lines, CSV and Parquet, compressed or remote. A malformed row is an
error naming the file and line: benchmark files are references, and silently skipping a test
item would hide contamination.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from platypus_ray.core.config import StrictModel
from platypus_ray.core.errors import InputError
from platypus_ray.core.paths import default_name, expand_files
from platypus_ray.core.readers import format_of, read_file
from platypus_ray.core.stage import Input
from platypus_ray.core.unicode_checks import LONE_SURROGATE_PROBLEM, has_lone_surrogate

BenchmarkFormat = Literal["mmlu_csv", "arc_jsonl", "hellaswag_jsonl", "truthfulqa_csv", "questions"]

_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "mmlu_csv": ("csv",),
    "arc_jsonl": ("jsonl", "json"),
    "hellaswag_jsonl": ("jsonl", "json"),
    "truthfulqa_csv": ("csv",),
    "questions": ("jsonl", "json", "parquet", "csv"),
}


class BenchmarkConfig(StrictModel):
    """One benchmark file or folder; the same entry serves refine (decontamination) and evaluate."""

    path: str = Field(description="a benchmark file or folder; local or a URI, as sources read")
    format: BenchmarkFormat = Field(
        description="mmlu_csv (no header: question,A,B,C,D,answer), arc_jsonl (AI2 or HF layout), hellaswag_jsonl, "
        "truthfulqa_csv, or questions (jsonl/json/parquet/csv: question, optional choices, answer, id)"
    )
    name: str | None = Field(None, description="defaults to the file or folder name")
    num_fewshot: int = Field(0, ge=0, description="few-shot examples per prompt (evaluate only)")
    fewshot_path: str | None = Field(
        None, description="evaluate only: a dev split in the same format to draw examples from"
    )
    limit: int | None = Field(None, ge=1, description="score only the first N items (evaluate only)")

    def inputs(self, key: str) -> list[Input]:
        """The files this entry reads (``key``: where it sits in the config, ``benchmarks[0]``)."""
        paths = {"path": self.path, "fewshot_path": self.fewshot_path}
        return [Input(f"{key}.{name}", path, "data", _EXTENSIONS[self.format]) for name, path in paths.items() if path]

    @property
    def benchmark_name(self) -> str:
        return self.name or default_name(self.path)


class BenchmarkFormatError(InputError):
    """A benchmark row that cannot be read; names the file and line."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One test question. ``id`` is ``<benchmark>/<file stem>:<row>`` unless the file carries ids."""

    id: str
    benchmark: str
    question: str
    choices: list[str] = field(default_factory=list)
    answer: int | None = None  # index into choices


def load_benchmark(cfg: BenchmarkConfig, path: str | None = None, allow_empty: bool = False) -> list[BenchmarkItem]:
    """Every item of a benchmark entry (or of ``path`` in its format, e.g. its dev split), in file order.

    No items is an error unless ``allow_empty``: an empty test set would make decontamination a no-op."""
    parse = _PARSERS[cfg.format]
    path = path or cfg.path
    items: list[BenchmarkItem] = []
    for file in expand_files(path, _EXTENSIONS[cfg.format]):
        stem = default_name(file)
        for row, (where, record) in enumerate(_records(file, cfg.format)):
            try:
                question, choices, answer, own_id = parse(record)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise BenchmarkFormatError(f"{file}, {where}: not a {cfg.format} row ({_reason(exc)})") from None
            if not isinstance(question, str) or not question.strip():
                raise BenchmarkFormatError(f"{file}, {where}: empty question")
            # the tokenizer and the Parquet writers would fail on it much later, with a traceback
            texts = {"question": question, **{f"choice {i + 1}": c for i, c in enumerate(choices)}, "id": own_id or ""}
            bad = next((name for name, text in texts.items() if has_lone_surrogate(str(text))), None)
            if bad:
                raise BenchmarkFormatError(f"{file}, {where}: the {bad} {LONE_SURROGATE_PROBLEM}")
            item_id = f"{cfg.benchmark_name}/{own_id or f'{stem}:{row}'}"
            items.append(BenchmarkItem(item_id, cfg.benchmark_name, question, choices, answer))
    if not items and not allow_empty:
        raise BenchmarkFormatError(
            f"benchmark '{cfg.benchmark_name}': '{path}' holds no {cfg.format} items, so nothing would be "
            "checked against it; fix the file, drop the entry, or pass --allow-empty-benchmark"
        )
    return items


def _reason(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def _records(path: str, fmt: str) -> Iterator[tuple[str, Any]]:
    """(where, record) pairs as the one reader reads the file (``core/readers.py``: the same
    formats, compression, schemes and rules as a training source); a row it marks bad, or a file
    it cannot read, is an error naming the file and the row, in the words a source's ledger uses."""
    try:
        # an existing file named without a known extension: read as its benchmark format's first kind
        for record in read_file(path, format_of(path) or _EXTENSIONS[fmt][0], header=fmt != "mmlu_csv"):
            if record.reason:
                raise BenchmarkFormatError(
                    f"{path}, {record.where}: {record.detail} ({record.reason}); fix the file: a benchmark "
                    "row is a reference and is never skipped"
                )
            yield record.where, record.value
    except BenchmarkFormatError:
        raise
    except InputError as exc:
        raise BenchmarkFormatError(str(exc)) from None


Parsed = tuple[str, list[str], "int | None", "str | None"]


def _mmlu(row: list[str]) -> Parsed:
    if len(row) != 6:
        raise ValueError(f"expected 6 fields question,A,B,C,D,answer, got {len(row)}")
    answer = row[5].strip().upper()
    if answer not in "ABCD" or len(answer) != 1:
        raise ValueError(f"answer must be one of A-D, got {row[5]!r}")
    return row[0], row[1:5], "ABCD".index(answer), None


def _arc(rec: dict[str, Any]) -> Parsed:
    question = rec["question"]
    if isinstance(question, dict):  # AI2 release: {"stem", "choices": [{"text", "label"}]}
        stem, choices = question["stem"], question["choices"]
        texts, labels = [c["text"] for c in choices], [c["label"] for c in choices]
    else:  # Hugging Face datasets layout: {"question", "choices": {"text": [], "label": []}}
        stem, texts, labels = question, rec["choices"]["text"], rec["choices"]["label"]
    key = str(rec["answerKey"])
    return stem, list(texts), [str(label) for label in labels].index(key), rec.get("id")


def _hellaswag(rec: dict[str, Any]) -> Parsed:
    ctx = rec.get("ctx") or f"{rec['ctx_a']} {rec['ctx_b']}".strip()
    label = rec.get("label")
    ind = rec.get("ind")
    return ctx, list(rec["endings"]), None if label in (None, "") else int(label), None if ind is None else str(ind)


def _truthfulqa(rec: dict[str, str]) -> Parsed:
    # TruthfulQA.csv: the best answer first, then the incorrect ones (';'-separated).
    incorrect = [a.strip() for a in rec.get("Incorrect Answers", "").split(";") if a.strip()]
    return rec["Question"], [rec["Best Answer"], *incorrect], 0, None


def _questions(rec: dict[str, Any]) -> Parsed:
    if not isinstance(rec.get("question"), str):
        raise ValueError("needs a string `question` field")
    choices = rec.get("choices") or []
    if isinstance(choices, str):
        choices = json.loads(choices) if choices.lstrip().startswith("[") else choices.split(";")
    choices = [str(c) for c in choices]
    answer = rec.get("answer")
    if isinstance(answer, str) and answer.strip():
        answer = answer.strip()
        if answer.isdigit():
            answer = int(answer)
        elif len(answer) == 1 and answer.upper() in "ABCDEFGH"[: len(choices)]:
            answer = "ABCDEFGH".index(answer.upper())
        else:
            answer = choices.index(answer)
    elif answer == "" or answer is None:
        answer = None
    return rec["question"], choices, answer, None if rec.get("id") is None else str(rec["id"])


_PARSERS: dict[str, Callable[[Any], Parsed]] = {
    "mmlu_csv": _mmlu,
    "arc_jsonl": _arc,
    "hellaswag_jsonl": _hellaswag,
    "truthfulqa_csv": _truthfulqa,
    "questions": _questions,
}
