"""Evaluate gives the numbers lm-evaluation-harness gives: the same task YAMLs over the same local
files, scored by ``lm_eval.simple_evaluate`` (its ``hf`` model, loaded once) and by this project's
Ray Data pool (one model load per actor). Per item: identical requests, log-likelihoods within
1e-4 and identical per-sample metrics; per task: aggregates equal to 4 decimals. 0-shot and
few-shot, on MMLU-, ARC- (choices of different lengths: acc_norm), HellaSwag- (its preprocessing)
and TruthfulQA-MC2-style tasks."""

from __future__ import annotations

import re

import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.evaluate import EvaluateConfig, run
from tests.evaluate.harness_tasks import FEWSHOT, run_outputs, write_tasks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    return folder, write_tasks(folder)


@pytest.fixture(scope="module")
def reference(tiny_model, task_folder):
    """lm-eval's own run: its hf model (float32, CPU, batch size auto) and its default seeds."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder, tasks = task_folder
    lm = HFLM(pretrained=tiny_model, dtype="float32", device="cpu", batch_size="auto")
    results = {}
    for shots in (0, FEWSHOT):
        names = [name for name, n in tasks.items() if (n > 0) == (shots > 0)]
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=TaskManager(include_path=str(folder)),
            num_fewshot=shots,
            log_samples=True,
        )
        results.update(
            {
                "results": {**results.get("results", {}), **out["results"]},
                "samples": {**results.get("samples", {}), **out["samples"]},
                "n-shot": {**results.get("n-shot", {}), **out["n-shot"]},
            }
        )
    return results


@pytest.fixture(scope="module")
def ours(ray_session, tiny_model, task_folder, tmp_path_factory):
    folder, tasks = task_folder
    out = tmp_path_factory.mktemp("eval") / "eval"
    cfg = validate_config(
        EvaluateConfig,
        {
            "model": {"name_or_path": tiny_model},
            "output": str(out),
            "benchmarks": [
                {"task": name, "num_fewshot": shots, "include_path": str(folder)} for name, shots in tasks.items()
            ],
            "inference": {"actors": 1, "batch_size": 8, "device": "cpu"},
        },
    )
    result = run(cfg)
    return {**run_outputs(result, cfg, out), "table": result.summary()}


TASKS = [
    "local_mmlu_0",
    "local_mmlu_fs",
    "local_arc_0",
    "local_arc_fs",
    "local_hellaswag_0",
    "local_hellaswag_fs",
    "local_truthfulqa_0",
]


@pytest.mark.parametrize("task", TASKS)
def test_per_item_requests_loglikelihoods_and_metrics_equal_lm_eval(task, reference, ours):
    theirs = sorted(reference["samples"][task], key=lambda s: s["doc_id"])
    mine = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in mine] == [s["doc_id"] for s in theirs] and len(mine) >= 6
    for a, b in zip(mine, theirs):
        assert [list(x) for x in a["arguments"]] == [list(x) for x in b["arguments"]], (
            f"doc {a['doc_id']}: prompts differ"
        )
        assert a["target"] == b["target"]
        their_ll = [float(r[0]) for r in b["filtered_resps"]]
        assert [float(r[0]) for r in a["filtered_resps"]] == pytest.approx(their_ll, abs=1e-4)
        assert [bool(r[1]) for r in a["filtered_resps"]] == [bool(r[1]) for r in b["filtered_resps"]]
        for metric in b["metrics"]:
            assert a[metric] == pytest.approx(float(b[metric]), abs=1e-6), f"doc {a['doc_id']}: {metric}"
    items = ours["items"][ours["items"]["task"] == task].sort_values("doc_id")
    assert items["logprobs"].map(list).tolist() == [[float(r[0]) for r in s["filtered_resps"]] for s in mine]


@pytest.mark.parametrize("task", TASKS)
def test_aggregates_equal_lm_eval_to_4_decimals(task, reference, ours):
    theirs = {
        k.split(",")[0]: float(v)
        for k, v in reference["results"][task].items()
        if "," in k and isinstance(v, (int, float)) and "stderr" not in k
    }
    mine = ours["summary"][task]
    assert theirs and {k: round(mine[k], 4) for k in theirs} == {k: round(v, 4) for k, v in theirs.items()}
    assert mine["num_fewshot"] == reference["n-shot"][task]
    assert mine["items"] == len(reference["samples"][task])


def test_metrics_are_lm_eval_s_names_per_task(ours):
    summary = ours["summary"]
    assert {"acc", "acc_norm"} <= set(summary["local_arc_fs"]) and {"acc", "acc_norm"} <= set(
        summary["local_hellaswag_0"]
    )
    assert (
        "acc_norm" not in summary["local_mmlu_0"] and "acc" in summary["local_truthfulqa_0"]
    )  # mc2 is truthfulqa_mc2's acc
    assert re.search(r"local_arc_fs +acc_norm +16 +3 ", ours["table"]), ours["table"]
