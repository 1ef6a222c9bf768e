"""Prompt formats, few-shot draws and skipped items: exact strings, no Ray."""

from __future__ import annotations

import pytest

from platypus_ray.benchmarks import BenchmarkConfig, BenchmarkItem
from platypus_ray.evaluate.requests import (
    benchmark_requests,
    context_for,
    fewshot_examples,
    mmlu_subject,
    prompt_and_choices,
    validation_requests,
)
from platypus_ray.evaluate.scoring import encode_pair


def item(i: int, answer: int | None = 1, bench: str = "quiz", stem: str = "quiz") -> BenchmarkItem:
    return BenchmarkItem(f"{bench}/{stem}:{i}", bench, f"Question {i}?", [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], answer)


def test_mmlu_prompt_is_the_harness_format_with_subject_header_and_letter_choices():
    mmlu = item(0, bench="mmlu", stem="high_school_us_history_test")
    shot = item(1, bench="mmlu", stem="high_school_us_history_test")
    assert mmlu_subject(mmlu.id) == "high school us history"
    assert context_for(mmlu, "mmlu_csv", [shot]) == (
        "The following are multiple choice questions (with answers) about high school us history.\n\n"
        "Question 1?\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer: B\n\n"
        "Question 0?\nA. a0\nB. b0\nC. c0\nD. d0\nAnswer:"
    )
    assert prompt_and_choices(mmlu, "mmlu_csv")[1] == [" A", " B", " C", " D"]


@pytest.mark.parametrize("fmt, prompt", [
    ("arc_jsonl", "Question: Question 0?\nAnswer:"),
    ("questions", "Question: Question 0?\nAnswer:"),
    ("truthfulqa_csv", "Q: Question 0?\nA:"),
    ("hellaswag_jsonl", "Question 0?"),
])
def test_other_formats_score_the_choice_text(fmt, prompt):
    assert prompt_and_choices(item(0), fmt) == (prompt, [" a0", " b0", " c0", " d0"])


def test_fewshot_draw_is_seeded_per_item_and_never_the_item_itself():
    pool = [item(i) for i in range(6)]
    for target in pool:
        shots = fewshot_examples(target, pool, 3, seed=7)
        assert len(shots) == 3 and target not in shots
        assert shots == fewshot_examples(target, list(pool), 3, seed=7)  # same draw again
    draws = {tuple(s.id for s in fewshot_examples(pool[0], pool, 2, seed)) for seed in range(20)}
    assert len(draws) > 1  # the seed matters
    with pytest.raises(ValueError, match="needs at least 6 labelled items"):
        fewshot_examples(pool[0], pool[:5], 5, seed=0)


def test_unscorable_items_are_skipped_with_a_reason_and_limit_applies(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("")
    cfg = BenchmarkConfig(path=str(path), format="questions", name="quiz", limit=3)
    items = [item(0), item(1, answer=None), BenchmarkItem("quiz/q:2", "quiz", "Q?", ["only"], 0), item(3)]
    rows, skipped = benchmark_requests(cfg, items, None, seed=0)
    assert [(s.item_id, s.reason) for s in skipped] == [("quiz/quiz:1", "no answer"), ("quiz/q:2", "fewer than 2 choices")]
    assert {r["item_id"] for r in rows} == {"quiz/quiz:0"}  # limit 3 stops before item 3
    assert [r["choice"] for r in rows] == [0, 1, 2, 3]


def test_encode_pair_moves_trailing_space_and_splits_at_the_context_tokens(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids, n = encode_pair(tokenizer, "Question: what?\nAnswer: ", "yes")
    context_ids = tokenizer("Question: what?\nAnswer:")["input_ids"]
    assert ids[: len(context_ids)] == context_ids
    assert tokenizer.decode(ids[-n:]) == " yes"
    ids, n = encode_pair(tokenizer, "prompt\n", "out", add_eos=True, move_space=False)
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[-n:-1]) == "out"


def test_validation_rows_use_the_training_template():
    rows = validation_requests([{"id": "x", "instruction": "Add 1 and 2.", "input": "", "output": "3"}], add_eos=True)
    assert rows[0]["context"].endswith("### Instruction:\nAdd 1 and 2.\n\n### Response:\n")
    assert rows[0]["continuation"] == "3" and rows[0]["add_eos"] and not rows[0]["move_space"]
