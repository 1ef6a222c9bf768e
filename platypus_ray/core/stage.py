"""The stage contract: what each command declares, and the one preflight everyone calls.

A stage (refine, train, sweep, merge, evaluate, pipeline, and the tool commands) is a
:class:`Stage`: its config class, the paths it reads (:meth:`Stage.inputs`) and writes
(:meth:`Stage.outputs`), each named by its config key, a :meth:`Stage.check` for what else
needs the disk, the network or the cluster (a tracking store, lm-eval tasks, cluster shape),
and :meth:`Stage.execute`, the work. Config schemas are pure data (types, ranges, cross-key
rules); everything that touches the world is here.

:meth:`Stage.preflight` runs in a fixed order: every input exists (all problems listed in one
error), every output may be written without destroying data the project did not write, then
the stage's own check, then (for a stage that uses the cluster) Ray starts and the cluster is
checked. Its return value (what the check loaded, or None) is handed to :meth:`Stage.execute`,
so nothing is loaded twice. :meth:`Stage.run` is preflight + execute:
the CLI, the ``jobs/`` scripts, the tests and Ray Tune trials call it. The pipeline runs every
section's checks before Ray starts, each told which paths an earlier section will write
(``planned``), then every cluster check, then each section's execute with its own result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Generic, Literal, TypeVar

from platypus_ray.core.config import ConfigError
from platypus_ray.core.models import adapter_problem, model_problem
from platypus_ray.core.outputs import check_output
from platypus_ray.core.paths import input_path_problem, is_remote

C = TypeVar("C")  # the stage's config
P = TypeVar("P")  # what its check loaded, handed to execute
R = TypeVar("R")  # its result

InputKind = Literal["data", "path", "folder", "file", "model", "adapter"]


@dataclass(frozen=True)
class Input:
    """A path a stage reads, under the config key that names it.

    ``kind``: ``data`` (files, a folder of them or a glob, with ``extensions``), ``path`` (a file
    or folder), ``folder``, ``file``, ``model`` (a hub id, or a local folder with config.json),
    ``adapter`` (a folder with adapter_config.json). ``hint`` ends the message when it is missing.
    Remote URIs are checked when read (no network calls in preflight)."""

    key: str
    path: str
    kind: InputKind = "data"
    extensions: tuple[str, ...] = ()
    hint: str = ""


@dataclass(frozen=True)
class Output:
    """A folder a stage writes (replaced whole, or a run folder it owns), under its config key.
    ``source_folders``: folders or globs the stage reads its sources from; the output may not
    sit where the next run would read it back."""

    key: str
    path: str
    source_folders: tuple[str, ...] = ()


def input_problem(item: Input) -> str | None:
    """Why ``item`` cannot be read now, or None."""
    path = item.path
    if is_remote(path):
        return None
    expanded = os.path.expanduser(path)
    if item.kind == "data":
        problem = input_path_problem(path, item.extensions)
    elif item.kind == "model":
        problem = model_problem(path)
    elif item.kind == "adapter":
        problem = adapter_problem(path)
    elif item.kind == "folder":
        problem = None if os.path.isdir(expanded) else f"'{path}' is not a folder"
    elif item.kind == "file":
        problem = None if os.path.isfile(expanded) else f"'{path}' does not exist"
    else:  # path: a file or a folder
        problem = None if os.path.exists(expanded) else f"'{path}' does not exist"
    return f"{problem}; {item.hint}" if problem and item.hint else problem


def _normal(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def is_planned(path: str, planned: Iterable[str]) -> bool:
    """Whether ``path`` is or lies under a path an earlier stage will write."""
    if is_remote(path):
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in planned if is_remote(p))
    target = _normal(path)
    return any(target == p or target.startswith(p + os.sep) for p in (_normal(q) for q in planned if not is_remote(q)))


class Stage(Generic[C, P, R]):
    """One command: a config class, its declared inputs and outputs, a check and the work."""

    name: ClassVar[str]
    config: ClassVar[type]

    def inputs(self, cfg: C) -> list[Input]:
        """Every path the stage reads, with its config key."""
        return []

    def outputs(self, cfg: C) -> list[Output]:
        """Every folder the stage writes, with its config key."""
        return []

    def check(self, cfg: C, planned: frozenset[str]) -> P:
        """The stage's own checks that need the disk or the network, after its inputs and outputs
        passed and before Ray starts; returns what it loaded for :meth:`execute` (or None)."""
        return None  # type: ignore[return-value]  # the default for stages that load nothing (P is None there)

    def check_cluster(self, cfg: C) -> None:
        """Checks that need the Ray cluster (a stage that has some starts Ray here)."""

    def execute(self, cfg: C, checked: P) -> R:
        """The work, on a config :meth:`preflight` passed."""
        raise NotImplementedError

    def check_before_ray(self, cfg: C, planned: Iterable[str] = (), prefix: str = "") -> P:
        """Inputs exist (or an earlier stage in ``planned`` writes them), outputs are safe to
        write, then :meth:`check`. ``prefix``: the stage's section in a pipeline config
        (``train.``), put before every key an input or output error names."""
        planned = frozenset(planned)
        inputs = self.inputs(cfg)
        problems = [
            f"{prefix}{item.key}: {problem}"
            for item in inputs
            if not is_planned(item.path, planned) and (problem := input_problem(item))
        ]
        if problems:
            raise ConfigError(f"{self.name}: inputs not found:\n" + "\n".join(f"  - {p}" for p in problems))
        read = [item.path for item in inputs]
        for out in self.outputs(cfg):
            check_output(out.path, prefix + out.key, inputs=read, source_folders=out.source_folders)
        return self.check(cfg, planned)

    def preflight(self, cfg: C, planned: Iterable[str] = ()) -> P:
        """Every check before any work: :meth:`check_before_ray`, then :meth:`check_cluster`."""
        checked = self.check_before_ray(cfg, planned)
        self.check_cluster(cfg)
        return checked

    def run(self, cfg: C) -> R:
        """Preflight, then the work: what the CLI, the jobs, the tests and Tune trials call."""
        return self.execute(cfg, self.preflight(cfg))
