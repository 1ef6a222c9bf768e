"""Generation tasks give the numbers lm-evaluation-harness gives: a GSM8K-style ``generate_until``
task (gsm8k's regex filters and exact_match) over local files, run by ``lm_eval.simple_evaluate``
(its ``hf`` model, batch size 1) and by this project's Ray Data pool (batch size 1): identical
prompts, identical generated strings, identical filtered answers and per-sample metrics, and
aggregates equal to 4 decimals; ``limit`` on both sides. Batches of 4 (left padding) give the
same strings too; a generation past its timeout fails naming the task and document. With the
tokenizer's chat template, few-shot examples as turns and a system instruction, a generation task
and a multiple-choice task match lm-eval the same way; so does a wikitext-style perplexity task
(``loglikelihood_rolling``, one page longer than the model's context)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.evaluate import EvaluateConfig, run
from platypus_ray.evaluate.pool import GenerationError
from tests.evaluate.gen_tasks import write_gen_tasks, write_rolling_task
from tests.evaluate.harness_tasks import run_outputs, write_tasks

pytestmark = pytest.mark.slow
TASK, SHOTS, LIMIT = "local_gsm8k", 2, 6
ROLLING = "local_wikitext"  # loglikelihood_rolling: perplexities


@pytest.fixture(scope="module")
def gen_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen_tasks")
    write_gen_tasks(folder)
    write_tasks(folder)  # the multiple-choice tasks, for a chat-templated log-likelihood task
    write_rolling_task(folder)
    return folder


@pytest.fixture(scope="module")
def hf_lm(tiny_model):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=tiny_model, dtype="float32", device="cpu", batch_size=1)


def reference_run(lm, folder, tasks: list[str], **prompt) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=TaskManager(include_path=str(folder)),
        num_fewshot=SHOTS,
        limit=LIMIT,
        log_samples=True,
        **prompt,
    )


def our_run(tiny_model, folder, out, tasks: list[str], **extra) -> dict:
    cfg = validate_config(
        EvaluateConfig,
        {
            "model": {"name_or_path": tiny_model},
            "output": str(out),
            "benchmarks": [{"task": t, "num_fewshot": SHOTS, "include_path": str(folder)} for t in tasks],
            "inference": {"actors": 1, "batch_size": 1, "device": "cpu"},
            "limit": LIMIT,
            **extra,
        },
    )
    return run_outputs(run(cfg), cfg, out)


def assert_same_samples(mine: list[dict], theirs: list[dict]) -> None:
    """Per (doc, filter): the same prompt and kwargs, generated text, filtered answer and metrics."""

    def key(s):
        return (s["doc_id"], s["filter"])

    mine, theirs = sorted(mine, key=key), sorted(theirs, key=key)
    assert [key(s) for s in mine] == [key(s) for s in theirs]
    for a, b in zip(mine, theirs):
        where = f"doc {a['doc_id']} ({a['filter']})"
        assert [list(x) for x in a["arguments"]] == [list(x) for x in b["arguments"]], f"{where}: prompts differ"
        if isinstance(b["filtered_resps"][0], float):  # rolling: one sum over many tokens
            assert a["filtered_resps"] == pytest.approx(b["filtered_resps"], rel=1e-6), where
        elif isinstance(b["filtered_resps"][0], str):  # generations: the very same text
            assert a["resps"] == b["resps"], f"{where}: generations differ"
            assert a["filtered_resps"] == b["filtered_resps"], f"{where}: filtered answers differ"
        else:  # log-likelihoods: within 1e-4, the same greedy flags
            their_ll = [float(r[0]) for r in b["filtered_resps"]]
            assert [float(r[0]) for r in a["filtered_resps"]] == pytest.approx(their_ll, abs=1e-4), where
            assert [bool(r[1]) for r in a["filtered_resps"]] == [bool(r[1]) for r in b["filtered_resps"]], where
        for metric in b["metrics"]:  # a number, or (log-likelihood, words or bytes) for perplexities
            expected = b[metric] if isinstance(b[metric], (list, tuple)) else [b[metric]]
            got = a[metric] if isinstance(a[metric], (list, tuple)) else [a[metric]]
            assert got == pytest.approx([float(x) for x in expected], rel=1e-6, abs=1e-9), f"{where}: {metric}"


def assert_same_aggregates(mine: dict, theirs: dict) -> None:
    expected = {
        k.replace(",none", ""): round(float(v), 4)
        for k, v in theirs.items()
        if "," in k and isinstance(v, (int, float)) and "stderr" not in k
    }
    assert expected and {k: round(mine[k], 4) for k in expected} == expected


@pytest.fixture(scope="module")
def plain(ray_session, tiny_model, hf_lm, gen_folder, tmp_path_factory):
    """One run each of lm-eval and of ours over the generation task and the rolling log-likelihood
    task (a run mixing request kinds, as a user's run does)."""
    reference = reference_run(hf_lm, gen_folder, [TASK, ROLLING])
    ours = our_run(tiny_model, gen_folder, tmp_path_factory.mktemp("gen") / "eval", [TASK, ROLLING])
    return reference, ours


def items_of(ours: dict, task: str):
    items = ours["items"]
    assert set(items["benchmark"]) == {TASK, ROLLING}
    return items[items["benchmark"] == task]


def test_generation_equals_lm_eval_per_sample_and_in_aggregate(plain):
    reference, ours = plain
    assert len({s["doc_id"] for s in ours["samples"][TASK]}) == LIMIT
    assert_same_samples(ours["samples"][TASK], reference["samples"][TASK])
    assert_same_aggregates(ours["summary"][TASK], reference["results"][TASK])
    assert ours["summary"][TASK]["items"] == LIMIT and ours["summary"][TASK]["num_fewshot"] == SHOTS
    # the task's numbers are not all zero: flexible-extract finds the model's favourite number
    assert ours["summary"][TASK]["exact_match,flexible-extract"] > 0


def test_items_carry_generated_text_and_filtered_answer(plain):
    reference, ours = plain
    items = items_of(ours, TASK)
    assert set(items["filter"]) == {"strict-match", "flexible-extract"} and len(items) == 2 * LIMIT
    for sample in reference["samples"][TASK]:
        row = items[(items["doc_id"] == sample["doc_id"]) & (items["filter"] == sample["filter"])].iloc[0]
        assert row["response"] == sample["resps"][0][0] and row["filtered"] == sample["filtered_resps"][0]
        assert row["exact_match"] == sample["exact_match"]


def test_batches_of_four_generate_the_same_strings(plain, hf_lm):
    """Left padding changes nothing here: the pool's batch function in batches of 4 (longest first)
    returns lm-eval's batch-size-1 strings."""
    from platypus_ray.evaluate.generation import generate_texts
    from platypus_ray.evaluate.pool import generation_blocks

    reference, _ = plain
    samples = [s for s in reference["samples"][TASK] if s["filter"] == "strict-match"]
    rows = pd.DataFrame(
        [
            {"context": s["arguments"][0][0], "gen_kwargs": s["arguments"][0][1], "task": TASK, "doc_id": 0}
            for s in samples
        ]
    )
    texts: list[str | None] = [None] * len(rows)
    blocks = generation_blocks(rows, hf_lm.tokenizer, 4)
    assert [b.num_rows for b in blocks] == [4, 2]
    for block in blocks:
        batch = block.to_pydict()
        out = generate_texts(
            hf_lm.model, hf_lm.tokenizer, batch["context"], json.loads(batch["gen_kwargs"][0]), hf_lm.max_length
        )
        for request, text in zip(batch["request"], out):
            texts[request] = text
    assert texts == [s["resps"][0][0] for s in samples]


def test_generation_past_its_timeout_names_task_and_document(ray_session, tiny_model, gen_folder, tmp_path):
    with pytest.raises(GenerationError, match=r"task 'local_gsm8k', doc \d+ .*inference\.timeout_s"):
        inference = {"batch_size": 2, "device": "cpu", "timeout_s": 0.001}
        our_run(tiny_model, gen_folder, tmp_path / "eval", [TASK], inference=inference)


CHAT_TASKS = ["local_gsm8k_chat", "local_arc_fs"]
SYSTEM = "You are a careful tutor."


@pytest.fixture(scope="module")
def chat(ray_session, tiny_model, hf_lm, gen_folder, tmp_path_factory):
    prompt = {"apply_chat_template": True, "fewshot_as_multiturn": True, "system_instruction": SYSTEM}
    reference = reference_run(hf_lm, gen_folder, CHAT_TASKS, **prompt)
    ours = our_run(tiny_model, gen_folder, tmp_path_factory.mktemp("chat") / "eval", CHAT_TASKS, prompt=prompt)
    return reference, ours


@pytest.mark.parametrize("task", CHAT_TASKS)
def test_chat_template_and_multiturn_fewshot_equal_lm_eval(chat, task):
    reference, ours = chat
    assert_same_samples(ours["samples"][task], reference["samples"][task])
    assert_same_aggregates(ours["summary"][task], reference["results"][task])
    context = ours["samples"][task][0]["arguments"][0][0]
    # the template's turns: the system instruction, SHOTS answered user turns, then the open one
    assert context.startswith(f"<s><|system|>\n{SYSTEM}") and context.count("<|assistant|>") == SHOTS + 1


def test_rolling_loglikelihood_perplexities_equal_lm_eval(plain):
    reference, ours = plain
    samples = ours["samples"][ROLLING]
    assert len(samples) == LIMIT
    assert_same_samples(samples, reference["samples"][ROLLING])
    assert_same_aggregates(ours["summary"][ROLLING], reference["results"][ROLLING])
    by_doc = sorted(samples, key=lambda s: s["doc_id"])
    logprobs = items_of(ours, ROLLING).sort_values("doc_id")["logprobs"].map(list).tolist()
    assert logprobs == [s["filtered_resps"] for s in by_doc]
