"""lm-evaluation-harness's evaluation loop with this project's Ray Data pool as the model.

``lm_eval.evaluator.evaluate`` builds every request from the task objects, hands them to an
``LM``'s ``loglikelihood`` in one call, then runs each task's filters, ``process_results`` and
aggregation (and stderr). :class:`PoolLM` is that ``LM``: its ``loglikelihood`` scores all the
requests (and any held-out rows riding along) in one pass of the actor pool, so one model
load per actor serves every task, and every metric is the one lm-eval defines and prints.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from platypus_ray.core.errors import require
from platypus_ray.evaluate.config import PromptSettings
from platypus_ray.evaluate.tasks import LoadedTasks

ScoreFn = Callable[[pd.DataFrame], pd.DataFrame]  # request rows in; logprob, n_tokens, greedy out (same order)
GenerateFn = Callable[[pd.DataFrame], list[str]]  # rows of context, gen_kwargs, task, doc_id in; texts out (same order)
RollingFn = Callable[[list[str]], list[float]]  # texts in; each one's summed token log-likelihood out
_NOT_METRICS = {"alias", "name", "sample_len", " ", "samples"}


def pool_lm(
    score: ScoreFn,
    generate: GenerateFn | None = None,
    rolling: RollingFn | None = None,
    tokenizer=None,
    extra: pd.DataFrame | None = None,
):
    """An ``lm_eval`` ``LM`` whose log-likelihoods come from ``score`` (``rolling`` for whole texts)
    and generations from ``generate``; ``tokenizer`` renders chat templates as lm-eval's ``hf``
    model does. ``extra`` request rows are scored in the first ``loglikelihood`` pass and their
    scores kept on ``.extra_scores`` (None when the tasks made no log-likelihood request)."""
    from lm_eval.api.model import LM

    class PoolLM(LM):
        def __init__(self) -> None:
            super().__init__()
            self.extra, self.extra_scores = extra, None

        @property
        def tokenizer_name(self) -> str:  # fingerprints lm-eval's request cache (unused: no cache)
            return str(getattr(tokenizer, "name_or_path", "")).replace("/", "__")

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            rows = pd.DataFrame(
                [{"context": r.args[0], "continuation": r.args[1]} for r in requests],
                columns=["context", "continuation"],
            ).assign(add_eos=False, move_space=True)
            n = len(rows)
            if self.extra is not None:
                rows = pd.concat([rows, self.extra[rows.columns]], ignore_index=True)
                self.extra = None
            scores = score(rows)
            if n < len(rows):
                self.extra_scores = scores.iloc[n:].reset_index(drop=True)
            return [(float(lp), bool(g)) for lp, g in zip(scores["logprob"][:n], scores["greedy"][:n])]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            require(rolling is not None, "loglikelihood_rolling requests reached a pool without a scorer for them")
            return rolling([r.args[0] for r in requests]) if requests else []  # type: ignore[misc]

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            require(generate is not None, "generate_until requests reached a pool without a generator")
            rows = pd.DataFrame(
                [
                    {"context": r.args[0], "gen_kwargs": r.args[1], "task": r.task_name, "doc_id": r.doc_id}
                    for r in requests
                ],
                columns=["context", "gen_kwargs", "task", "doc_id"],
            )
            return generate(rows) if len(rows) else []  # type: ignore[misc]  # checked just above

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return render_chat(tokenizer, chat_history, add_generation_prompt)

    return PoolLM()


def render_chat(tokenizer, chat_history: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The tokenizer's chat template over ``chat_history``, as lm-eval's ``hf`` model renders it: the
    prompt of a new assistant turn, or the last assistant message left open (a ``gen_prefix``);
    a template that rejects the system role gets the history without it."""
    import jinja2

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    try:
        return render(chat_history)
    except jinja2.exceptions.TemplateError:
        return render([m for m in chat_history if m["role"] != "system"])


def evaluate_tasks(loaded: LoadedTasks, lm, limit: int | None, prompt: PromptSettings | None = None) -> dict:
    """lm-eval's own results dict (``results``, ``groups``, ``samples``, ``n-shot``, ...), seeded
    as ``simple_evaluate`` seeds (its defaults: 0 for ``random``, 1234 for numpy and torch), with
    ``prompt``'s chat template, system instruction and few-shot turns as ``simple_evaluate`` takes them."""
    import torch
    from lm_eval.evaluator import evaluate

    prompt = prompt or PromptSettings()
    random.seed(0)
    np.random.seed(1234)
    torch.manual_seed(1234)
    return evaluate(
        lm=lm,
        task_dict=loaded.task_dict,
        limit=limit,
        log_samples=True,
        bootstrap_iters=100000,
        system_instruction=prompt.system_instruction,
        apply_chat_template=prompt.apply_chat_template,
        fewshot_as_multiturn=prompt.multiturn,
    )


def metrics_of(entry: dict) -> dict[str, float]:
    """``{"acc,none": .5, "acc_stderr,none": .1, "alias": ..}`` -> ``{"acc": .5, "acc_stderr": .1}``."""
    out = {}
    for key, value in entry.items():
        metric, _, filter_name = key.partition(",")
        if metric in _NOT_METRICS or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        out[metric if filter_name in ("", "none") else f"{metric},{filter_name}"] = float(value)
    return out


def entry_metrics(results: dict, loaded: LoadedTasks) -> dict[str, dict]:
    """Per config entry (task or group): items scored, shots, and lm-eval's aggregate metrics."""
    out = {}
    for name, lm_name in zip(loaded.names, loaded.lm_names):
        members = [t for t, e in loaded.entry_of.items() if e == name]
        entry = results.get("results", {}).get(lm_name) or results.get("groups", {}).get(lm_name) or {}
        shots = {results.get("n-shot", {}).get(t) for t in members}
        out[name] = {
            "items": sum(len({s["doc_id"] for s in results["samples"].get(t, [])}) for t in members),
            "num_fewshot": shots.pop() if len(shots) == 1 else sorted(s for s in shots if s is not None),
            **metrics_of(entry),
        }
    return out


def item_rows(results: dict, loaded: LoadedTasks) -> pd.DataFrame:
    """One row per (task, document): lm-eval's target and every per-sample metric the task's
    ``process_results`` returned (acc, acc_norm, mc2, exact_match, ...); for log-likelihood tasks
    the per-choice log-likelihoods and their argmax (a rolling task: the text's one), for
    generation tasks the generated text (``response``) and what the row's ``filter`` made of it
    (``filtered``): one row per filter."""
    rows = []
    for task, samples in results["samples"].items():
        for sample in samples:
            row = {
                "benchmark": loaded.entry_of.get(task, task),
                "task": task,
                "doc_id": int(sample["doc_id"]),
                "filter": str(sample.get("filter", "none")),
                "target": str(sample["target"]),
                "pred": -1,
                "logprobs": [],
                "response": "",
                "filtered": "",
            }
            resps = sample["filtered_resps"]
            if resps and isinstance(resps[0], str):  # generate_until: one text per request
                row.update(response=str(sample["resps"][0][0]), filtered=str(resps[0]))
            elif resps and isinstance(resps[0], (list, tuple)):  # loglikelihood: (logprob, greedy) per choice
                logprobs = [float(r[0]) for r in resps]
                row.update(logprobs=logprobs, pred=int(np.argmax(logprobs)))
            elif resps:  # loglikelihood_rolling: the text's summed log-likelihood
                row.update(logprobs=[float(r) for r in resps])
            row.update({m: float(sample[m]) for m in sample["metrics"] if isinstance(sample.get(m), (int, float))})
            rows.append(row)
    return pd.DataFrame(rows)


def write_samples(results: dict, folder: Path) -> list[Path]:
    """lm-eval's per-sample records, one JSONL per task as its ``--log_samples`` writes them."""
    from lm_eval.utils import handle_non_serializable

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task, samples in results["samples"].items():
        path = folder / f"samples_{task}.jsonl"
        with path.open("w") as f:
            for sample in samples:
                f.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
        written.append(path)
    return written
