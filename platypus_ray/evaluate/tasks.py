"""The config's benchmark entries as lm-evaluation-harness task objects, loaded in the driver.

lm-eval's ``TaskManager`` resolves each name (a built-in task or group, or one defined by a YAML
in an ``include_path``), and loading a task loads its data, so a task whose data cannot be read
(offline, a wrong ``data_files`` path) fails here, before Ray starts, with one line naming the
task and the fix. ``num_fewshot`` and the few-shot seed are applied as ``lm_eval.simple_evaluate``
applies them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from platypus_ray.core.errors import InputError
from platypus_ray.evaluate.config import BenchmarkEntry, TaskEntry
from platypus_ray.evaluate.file_tasks import write_file_task
from platypus_ray.testsets import BenchmarkConfig

OFFLINE_FIX = (
    "write a task YAML with `dataset_path: json` (or csv/parquet) and `dataset_kwargs: {data_files: "
    "{test: <local file>}}` (`include:` the built-in task's YAML to keep its prompts and metrics), and "
    "give its folder as `include_path`"
)

SCORED_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")  # lm-eval's four


class TaskLoadError(InputError):
    """A benchmark entry lm-eval cannot turn into a task (unknown name, data not loadable)."""


@dataclass
class LoadedTasks:
    """What ``lm_eval.evaluator.evaluate`` takes (``task_dict``) plus which entry each task came from."""

    task_dict: dict
    names: list[str]  # per config entry: its name in the tables (a file entry's `name`, else the task)
    lm_names: list[str]  # per config entry: the lm-eval task or group its results are under
    entry_of: dict[str, str] = field(default_factory=dict)  # leaf task name -> the name in ``names`` it belongs to
    skipped: dict[str, list[str]] = field(default_factory=dict)  # entry name -> unscorable item ids

    @property
    def tasks(self) -> dict:
        return self.task_dict["tasks"]


def load_tasks(entries: list[BenchmarkEntry], seed: int, folder: Path) -> LoadedTasks:
    """Every entry's lm-eval tasks, few-shot count and seed set; file entries get their YAML in ``folder``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lm_eval.tasks import TaskManager

    folder.mkdir(parents=True, exist_ok=True)
    lm_names, skipped = [], {}
    for entry in entries:
        if isinstance(entry, BenchmarkConfig):
            name, skipped_ids = write_file_task(entry, folder)
            lm_names.append(name)
            if skipped_ids:
                skipped[entry.benchmark_name] = skipped_ids
        else:
            lm_names.append(entry.task)
    names = [entry.benchmark_name for entry in entries]
    include = [
        os.path.abspath(os.path.expanduser(e.include_path))
        for e in entries
        if isinstance(e, TaskEntry) and e.include_path
    ] + [str(folder)]
    manager = TaskManager(include_path=include)
    merged: dict = {"tasks": {}, "groups": {}, "group_map": {}}
    entry_of: dict[str, str] = {}
    for entry, name, lm_name in zip(entries, names, lm_names):
        loaded = _load_one(manager, entry, lm_name)
        for task_name, task in loaded["tasks"].items():
            if task_name in entry_of:
                raise TaskLoadError(
                    f"benchmarks: task '{task_name}' is in both '{entry_of[task_name]}' and '{name}'; "
                    "list each task once"
                )
            entry_of[task_name] = name
            output_type = task.get_config("output_type")
            if output_type not in SCORED_TYPES:
                raise TaskLoadError(
                    f"benchmarks: task '{task_name}' (in '{name}') is a {output_type} task; evaluate "
                    f"runs {', '.join(SCORED_TYPES)} tasks (run it with lm-eval itself)"
                )
            _set_fewshot(task, entry.num_fewshot, seed)
        for key in merged:
            merged[key].update(loaded.get(key, {}))
    return LoadedTasks(merged, names, lm_names, entry_of, skipped)


def _load_one(manager, entry: BenchmarkEntry, name: str) -> dict:
    where = f"benchmarks: task '{name}'"
    try:
        return manager.load([name])
    except KeyError as exc:
        if "not a registered" not in str(exc):
            raise
        hint = (
            f" in lm-eval or {entry.include_path}"
            if isinstance(entry, TaskEntry) and entry.include_path
            else " in lm-eval"
        )
        raise TaskLoadError(
            f"{where}: no task or group of that name{hint}; check the name (`lm-eval ls tasks`) "
            "or set `include_path:` to the folder holding its YAML"
        ) from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for one cause: the data is not reachable
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") in {"1", "true", "yes"} else ""
        raise TaskLoadError(f"{where}: its data cannot be loaded{offline} ({reason}); {OFFLINE_FIX}") from None


def _set_fewshot(task, num_fewshot: int | None, seed: int) -> None:
    """As ``simple_evaluate``: a task whose YAML pins 0 shots keeps 0; no count anywhere means 0."""
    if num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=seed)
