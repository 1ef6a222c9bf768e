"""Benchmark entries to lm-eval tasks (no Ray): file entries as thin task YAMLs, few-shot settings,
errors before Ray; the scorer's tokenisation (lm-eval's) and its shared forward passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from platypus_ray.core.config import ConfigError, validate_config
from platypus_ray.evaluate.config import LEADERBOARD, EvaluateConfig, TaskEntry
from platypus_ray.evaluate.requests import validation_requests
from platypus_ray.evaluate.scoring import Scorer, encode_pair, score_encoded
from platypus_ray.evaluate.tasks import TaskLoadError, load_tasks


def write_questions(path, n: int, with_unscorable: bool = False) -> None:
    rows = [
        {"id": f"q{i}", "question": f"Question {i}?", "choices": [f"a{i}", f"bb{i}", f"ccc{i}"], "answer": i % 3}
        for i in range(n)
    ]
    if with_unscorable:
        rows.append({"id": "no-answer", "question": "Open question?", "choices": ["x", "y"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def config(tmp_path, model: str, benchmarks, **extra) -> EvaluateConfig:
    return validate_config(
        EvaluateConfig,
        {"model": {"name_or_path": model}, "output": str(tmp_path / "out"), "benchmarks": benchmarks, **extra},
    )


def requests_of(loaded, task: str) -> list[tuple[str, str]]:
    task_obj = loaded.tasks[task]
    task_obj.build_all_requests(limit=None, rank=0, world_size=1)
    return [instance.args for instance in task_obj.instances]


def test_a_questions_file_becomes_an_lm_eval_task_with_its_prompts_and_fewshot(tiny_model, tmp_path):
    quiz = tmp_path / "quiz.jsonl"
    write_questions(quiz, 6, with_unscorable=True)
    cfg = config(tmp_path, tiny_model, [{"path": str(quiz), "format": "questions", "name": "quiz", "num_fewshot": 2}])
    loaded = load_tasks(cfg.benchmarks, cfg.seed, tmp_path / "tasks")
    assert (
        loaded.names == ["quiz"] and loaded.lm_names == ["file_quiz"] and loaded.skipped == {"quiz": ["quiz/no-answer"]}
    )
    requests = requests_of(loaded, "file_quiz")
    assert len(requests) == 6 * 3  # the unscorable item never reaches lm-eval
    contexts = {context for context, _ in requests}
    assert len(contexts) == 6
    for context in contexts:
        blocks = context.split("\n\n")
        assert len(blocks) == 3 and blocks[-1].startswith("Question: Question ") and blocks[-1].endswith("\nAnswer:")
        assert blocks[-1] not in blocks[:2]  # the few-shot split is the test split: the item itself is excluded
        assert all(b.split("\nAnswer: ")[1] in {"a0", "bb1", "ccc2", "a3", "bb4", "ccc5"} for b in blocks[:2])
    assert {c for _, c in requests if _.endswith("Question 1?\nAnswer:")} == {" a1", " bb1", " ccc1"}


def test_mmlu_csv_file_uses_lm_eval_s_mmlu_template_and_first_n_dev_examples(tiny_model, tmp_path):
    (tmp_path / "mmlu").mkdir()
    test, dev = tmp_path / "mmlu/anatomy_test.csv", tmp_path / "anatomy_dev.csv"
    test.write_text("What is bone?,tissue,gas,liquid,plasma,A\n")
    dev.write_text("".join(f"Dev {i}?,w{i},x{i},y{i},z{i},{'ABCD'[i % 4]}\n" for i in range(4)))
    cfg = config(
        tmp_path,
        tiny_model,
        [{"path": str(test), "format": "mmlu_csv", "name": "mmlu", "num_fewshot": 2, "fewshot_path": str(dev)}],
    )
    loaded = load_tasks(cfg.benchmarks, cfg.seed, tmp_path / "tasks")
    requests = requests_of(loaded, "file_mmlu")
    assert [c for _, c in requests] == [" A", " B", " C", " D"]
    assert requests[0][0] == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Dev 0?\nA. w0\nB. x0\nC. y0\nD. z0\nAnswer: A\n\n"
        "Dev 1?\nA. w1\nB. x1\nC. y1\nD. z1\nAnswer: B\n\n"
        "What is bone?\nA. tissue\nB. gas\nC. liquid\nD. plasma\nAnswer:"
    )


def test_fewshot_count_follows_simple_evaluate_rules(tiny_model, tmp_path):
    quiz = tmp_path / "quiz.jsonl"
    write_questions(quiz, 4)
    cfg = config(tmp_path, tiny_model, [{"path": str(quiz), "format": "questions", "name": "quiz", "num_fewshot": 3}])
    loaded = load_tasks(cfg.benchmarks, cfg.seed, tmp_path / "tasks")
    assert loaded.tasks["file_quiz"].get_config("num_fewshot") == 3


def test_unknown_task_and_offline_builtin_fail_naming_the_task_and_the_fix(tiny_model, tmp_path):
    cfg = config(tmp_path, tiny_model, [{"task": "no_such_task_anywhere"}])
    with pytest.raises(TaskLoadError, match="task 'no_such_task_anywhere': no task or group of that name"):
        load_tasks(cfg.benchmarks, cfg.seed, tmp_path / "tasks")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    cfg = config(tmp_path, tiny_model, [{"task": "arc_challenge", "num_fewshot": 25}])
    with pytest.raises(
        TaskLoadError,
        match=r"task 'arc_challenge': its data cannot be loaded \(HF_HUB_OFFLINE=1\).*"
        r"data_files.*include_path",
    ):
        load_tasks(cfg.benchmarks, cfg.seed, tmp_path / "tasks")


def test_multiturn_fewshot_without_a_chat_template_is_a_config_error(tmp_path):
    from platypus_ray.core.config import ConfigError

    with pytest.raises(ConfigError, match="fewshot_as_multiturn: true needs apply_chat_template: true"):
        config(tmp_path, "org/model", [{"task": "arc_easy"}], prompt={"fewshot_as_multiturn": True})


def test_cli_offline_task_is_one_error_line_before_ray(tiny_model, tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text(
        json.dumps(
            {
                "model": {"name_or_path": tiny_model},
                "output": str(tmp_path / "out"),
                "benchmarks": "open_llm_leaderboard",
            }
        )
    )
    env = {
        **os.environ,
        "RAY_ADDRESS": "127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
    }  # nothing listens there: Ray must not be reached
    proc = subprocess.run(
        [sys.executable, "-m", "platypus_ray", "evaluate", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("platypus-ray evaluate: error: benchmarks: task 'arc_challenge'")
    assert "Traceback" not in proc.stderr


def test_config_entries_preset_and_limits(tiny_model, tmp_path):
    cfg = config(tmp_path, tiny_model, "open_llm_leaderboard", limit=10)
    assert [(b.task, b.num_fewshot) for b in cfg.benchmarks] == [(e["task"], e["num_fewshot"]) for e in LEADERBOARD]
    assert all(isinstance(b, TaskEntry) for b in cfg.benchmarks) and cfg.limit == 10
    with pytest.raises(ConfigError, match="unknown benchmarks preset 'leaderboard'"):
        config(tmp_path, tiny_model, "leaderboard")
    from platypus_ray.evaluate.stage import STAGE

    missing_folder = config(tmp_path, tiny_model, [{"task": "mine", "include_path": str(tmp_path / "missing")}])
    with pytest.raises(
        ConfigError, match=r"benchmarks\[0\]\.include_path: .* is not a folder; give a folder of task YAMLs"
    ):
        STAGE.check_before_ray(missing_folder)
    with pytest.raises(ConfigError, match="limit"):
        config(tmp_path, tiny_model, [{"task": "mine"}], limit=0)


def test_encoding_is_lm_eval_s(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids, n = encode_pair(tokenizer, "Question: what?\nAnswer: ", "yes")  # the trailing space moves
    context_ids = tokenizer("Question: what?\nAnswer:")["input_ids"]
    assert ids[: len(context_ids)] == context_ids and context_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[-n:]) == " yes"
    ids, n = encode_pair(tokenizer, "", "yes")  # no context: BOS is the context
    assert ids[0] == tokenizer.bos_token_id and n == len(ids) - 1
    ids, _ = encode_pair(tokenizer, "<s>Question:", " yes")  # already starts with BOS: not added twice
    assert ids.count(tokenizer.bos_token_id) == 1
    ids, n = encode_pair(tokenizer, "prompt\n", "out", add_eos=True, move_space=False)
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[-n:-1]) == "out"


def test_scorer_on_a_batch_without_ray_shares_identical_inputs(tiny_model):
    scorer = Scorer(tiny_model, None, "auto", "cpu", None)
    context = "Question: which?\nAnswer:"
    batch = {
        "request": np.arange(4),
        "context": np.array([context, context, context, "Other:"]),
        "continuation": np.array([" A", " B", " a longer answer", " A"]),
        "add_eos": np.zeros(4, bool),
        "move_space": np.ones(4, bool),
    }
    together = scorer(batch)
    alone = [
        score_encoded(scorer.model, [encode_pair(scorer.tokenizer, c, k)], scorer.pad_id, scorer.max_length)[0]
        for c, k in zip(batch["context"], batch["continuation"])
    ]
    np.testing.assert_allclose(together["logprob"], [a[0] for a in alone], rtol=0, atol=1e-5)
    assert together["n_tokens"].tolist() == [a[1] for a in alone] and together["request"].tolist() == [0, 1, 2, 3]
    assert scorer.max_length == 512  # lm-eval's resolve_max_length: the config's max_position_embeddings


def test_validation_rows_use_the_training_template():
    rows = validation_requests([{"id": "x", "instruction": "Add 1 and 2.", "input": "", "output": "3"}], add_eos=True)
    assert rows[0]["context"].endswith("### Instruction:\nAdd 1 and 2.\n\n### Response:\n")
    assert rows[0]["continuation"] == "3" and rows[0]["add_eos"] and not rows[0]["move_space"]
