"""The evaluate stage on real Ray Data with the tiny LLaMA, on a benchmark file (a thin lm-eval task):
scores equal a one-at-a-time PyTorch loop, a model tuned on the answers beats its base, malformed
rows fail clearly."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.evaluate import EvaluateConfig, run

pytestmark = pytest.mark.slow
WORDS = ["amber", "basil", "cedar", "delta", "ember", "flint", "grove", "heron", "ivory", "jolly", "karma", "lemon"]


def write_quiz(path, n: int = 12, seed: int = 0) -> list[dict]:
    """A generated multiple-choice set in the `questions` format, answers at random positions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        choices = rng.sample(WORDS, 4)
        rows.append(
            {
                "id": f"q{i}",
                "question": f"Which word is the password of vault {i}?",
                "choices": choices,
                "answer": rng.randrange(4),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def eval_config(tmp_path, model_path: str, quiz, shots: int = 1, **extra) -> EvaluateConfig:
    raw = {
        "model": {"name_or_path": model_path},
        "output": str(tmp_path / "eval"),
        "benchmarks": [{"path": str(quiz), "format": "questions", "name": "vault", "num_fewshot": shots}],
        "inference": {"actors": 1, "batch_size": 5, "device": "cpu"},
    }
    return validate_config(EvaluateConfig, {**raw, **extra})


def reference_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Plain PyTorch, one sequence, no padding: sum of log p(continuation tokens | prefix)."""
    import torch

    context, continuation = context.rstrip(" "), context[len(context.rstrip(" ")) :] + continuation
    context_ids = tokenizer(context)["input_ids"]
    ids = context_ids + tokenizer(context + continuation)["input_ids"][len(context_ids) :]
    n = len(ids) - len(context_ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return float(sum(logprobs[len(ids) - 1 - n + j, ids[len(ids) - n + j]] for j in range(n)))


def test_scores_equal_a_one_item_at_a_time_pytorch_loop(ray_session, tiny_model, kept_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiz = tmp_path / "quiz.jsonl"
    rows = write_quiz(quiz)
    cfg = eval_config(tmp_path, tiny_model, quiz, validation={"path": kept_folder, "rows": 7})
    result = run(cfg)
    items = pd.read_parquet(tmp_path / "eval/items.parquet").set_index("doc_id")
    validation = pd.read_parquet(tmp_path / "eval/validation.parquet")
    label = cfg.model.display_name
    samples = [
        json.loads(line)
        for line in (tmp_path / f"eval/samples/{label}/samples_file_vault.jsonl").read_text().splitlines()
    ]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    correct, correct_norm = [], []
    for sample in samples:
        row = rows[sample["doc_id"]]
        assert [c for _, c in sample["arguments"]] == [f" {c}" for c in row["choices"]]
        assert sample["arguments"][0][0].endswith(f"Question: {row['question']}\nAnswer:")
        expected = [
            reference_logprob(model, tokenizer, context, continuation) for context, continuation in sample["arguments"]
        ]
        np.testing.assert_allclose(items.loc[sample["doc_id"], "logprobs"], expected, rtol=0, atol=1e-4)
        correct.append(int(np.argmax(expected)) == row["answer"])
        # lm-eval's acc_norm: log-likelihood per character of the choice, the space before it not counted
        lengths = np.array([len(c) for c in row["choices"]])
        correct_norm.append(int(np.argmax(np.array(expected) / lengths)) == row["answer"])
        assert (
            items.loc[sample["doc_id"], "acc"] == correct[-1]
            and items.loc[sample["doc_id"], "acc_norm"] == correct_norm[-1]
        )
    summary = result.summary_data["models"][label]
    assert summary["benchmarks"]["vault"]["items"] == 12 == len(samples)
    assert summary["benchmarks"]["vault"]["acc"] == pytest.approx(np.mean(correct))
    assert summary["benchmarks"]["vault"]["acc_norm"] == pytest.approx(np.mean(correct_norm))

    # Held-out loss: the same masked loss the train stage optimises, summed over 7 rows.
    from platypus_ray.train.prompts import tokenize_example

    rows = pd.read_parquet(kept_folder).head(7)
    total, tokens = 0.0, 0
    import torch

    for row in rows.itertuples():
        example = tokenize_example(tokenizer, row.instruction, row.input, row.output, cutoff_len=10_000)
        labels = torch.tensor(example["labels"])
        with torch.no_grad():
            out = model(torch.tensor([example["input_ids"]]), labels=labels[None])
        n = int((labels[1:] != -100).sum())
        total, tokens = total + float(out.loss) * n, tokens + n
    assert summary["validation"]["tokens"] == tokens == validation["n_tokens"].sum()
    assert summary["validation"]["loss"] == pytest.approx(total / tokens, abs=1e-4)
    assert "vault" in result.summary() and "acc_norm" in result.summary()
    assert (tmp_path / "eval/config.yaml").is_file()


def fine_tune_on_answers(base: str, rows: list[dict], out) -> str:
    """Full-parameter steps on the quiz's correct answers, in the evaluated prompt format."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    texts = [f"Question: {r['question']}\nAnswer: {r['choices'][r['answer']]}" for r in rows]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(120):
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_a_model_tuned_on_the_answers_beats_its_base(ray_session, tiny_model, tmp_path):
    quiz = tmp_path / "quiz.jsonl"
    rows = write_quiz(quiz, n=12, seed=1)
    tuned = fine_tune_on_answers(tiny_model, rows, tmp_path / "tuned")
    # 0-shot: the prompt it was tuned on (lm-eval's few-shot examples are other items' answers, a distraction)
    cfg = eval_config(
        tmp_path,
        tuned,
        quiz,
        shots=0,
        compare_with={"name_or_path": tiny_model, "label": "base"},
        model={"name_or_path": tuned, "label": "tuned"},
    )
    result = run(cfg)
    scores = {m: s["benchmarks"]["vault"]["acc"] for m, s in result.summary_data["models"].items()}
    assert scores["tuned"] >= 0.9, scores
    assert scores["tuned"] >= scores["base"] + 0.4, scores
    table = result.summary()
    assert "tuned" in table and "base" in table and "delta" in table and "acc_norm" in table


def test_malformed_benchmark_row_fails_before_ray_naming_file_and_line(tiny_model, tmp_path):
    quiz = tmp_path / "quiz.jsonl"
    write_quiz(quiz, n=3)
    with quiz.open("a") as f:
        f.write('{"question": "Broken?", "choices": ["a", "b"]\n')
    config = tmp_path / "eval.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"name_or_path": tiny_model},
                "output": str(tmp_path / "eval"),
                "benchmarks": [{"path": str(quiz), "format": "questions"}],
            }
        )
    )
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}  # nothing listens there: Ray must not be reached
    proc = subprocess.run(
        [sys.executable, "-m", "platypus_ray", "evaluate", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{quiz}, line 4: malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_needs_work_and_distinct_labels(tiny_model, tmp_path):
    from platypus_ray.core.config import ConfigError

    with pytest.raises(ConfigError, match="give benchmarks, a validation set, or both"):
        validate_config(EvaluateConfig, {"model": {"name_or_path": tiny_model}})
    quiz = tmp_path / "quiz.jsonl"
    write_quiz(quiz, n=2)
    with pytest.raises(ConfigError, match="same label"):
        eval_config(tmp_path, tiny_model, quiz, compare_with={"name_or_path": tiny_model})
    from platypus_ray.evaluate.stage import STAGE

    not_an_adapter = eval_config(
        tmp_path, tiny_model, quiz, model={"name_or_path": tiny_model, "adapter": str(tmp_path)}
    )
    with pytest.raises(ConfigError, match=r"model\.adapter: .* is not a LoRA adapter folder"):
        STAGE.check_before_ray(not_an_adapter)
