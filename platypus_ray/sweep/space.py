"""``sweep.space``: any dotted train-config key mapped to a list or a distribution.

    space:
      lora.r: [8, 16, 64]                          # grid (search: grid) or choices (random/optuna)
      lora.target_modules: [attention, mlp, [q_proj, v_proj]]
      training.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
      lora.dropout: {uniform: [0.0, 0.1]}
      training.warmup_steps: {randint: [0, 50]}    # low inclusive, high exclusive

A trial's config is the sweep's train config with the trial's values set at those keys,
validated like any train config; every list value and every distribution bound is checked
that way before Ray starts. Keys that change the tokenised data (``data.*``,
``model.name_or_path``, ``training.seed``) take lists only: the sweep driver tokenises each
variant once and the trials share it.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from platypus_ray.core.config import _describe_error, _model_in
from platypus_ray.train.config import TrainConfig

DISTRIBUTIONS = ("loguniform", "uniform", "randint")
DATA_KEYS = ("model.name_or_path", "training.seed")  # plus every data.* key
_MAX_COMBINATIONS = 512  # grids up to this size are validated point by point


@dataclass
class Dimension:
    """One searched key: a list of values, or a distribution between two bounds."""

    key: str
    values: list[Any] | None = None
    distribution: str | None = None
    low: float = 0.0
    high: float = 0.0

    @property
    def probes(self) -> list[Any]:
        """The values checked before Ray starts: every list value, or both bounds."""
        if self.values is not None:
            return self.values
        return [int(self.low), int(self.high) - 1] if self.distribution == "randint" else [self.low, self.high]


def is_data_key(key: str) -> bool:
    return key.startswith("data.") or key in DATA_KEYS


def parse(space: dict[str, Any]) -> tuple[list[Dimension], list[str]]:
    """Dimensions, and the problems of entries that are neither a list nor a known distribution."""
    dims, problems = [], []
    for key, spec in space.items():
        where = f"sweep.space.{key}"
        if isinstance(spec, list):
            if not spec:
                problems.append(f"{where}: give at least one value")
            else:
                dims.append(Dimension(key, values=spec))
            continue
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            problems.append(
                f"{where}: give a list of values or one of "
                + ", ".join(f"{{{d}: [low, high]}}" for d in DISTRIBUTIONS)
                + f" (got {spec!r})"
            )
            continue
        ((name, bounds),) = spec.items()
        numbers = (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        )
        if not numbers or not bounds[0] < bounds[1]:
            problems.append(f"{where}: {name} needs [low, high] with low < high (got {bounds!r})")
        elif name == "randint" and not all(isinstance(b, int) for b in bounds):
            problems.append(f"{where}: randint needs integer bounds (got {bounds!r})")
        elif name == "loguniform" and bounds[0] <= 0:
            problems.append(f"{where}: loguniform needs low > 0 (got {bounds!r})")
        elif is_data_key(key):
            problems.append(
                f"{where}: a key that changes the tokenised data takes a list of values "
                "(each variant is tokenised once, before the trials)"
            )
        else:
            dims.append(Dimension(key, distribution=name, low=bounds[0], high=bounds[1]))
    return dims, problems


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be searched, or None: it must name one train-config value."""
    parts = key.split(".")
    if parts[0] in ("run", "tracking"):
        return f"sweep.space.{key}: each trial sets its own run and tracking keys; search other keys"
    model: Any = TrainConfig
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            hint = difflib.get_close_matches(part, list(fields), n=1)
            guess = f" (did you mean '{'.'.join([*parts[:i], hint[0]])}'?)" if hint else ""
            return f"sweep.space.{key}: not a train config key{guess}; valid here: {', '.join(fields)}"
        annotation = fields[part].annotation
        section = _model_in(annotation)
        last = i == len(parts) - 1
        if last:
            if section is not None and section is annotation:
                return f"sweep.space.{key}: a whole section; name one of its keys ({', '.join(section.model_fields)})"
            return None
        if section is None:
            is_mapping = typing.get_origin(annotation) is dict
            return (
                None if is_mapping and i == len(parts) - 2 else f"sweep.space.{key}: '{part}' is a value, not a section"
            )
        model = section
    return None


def trial_config(base: dict[str, Any], point: dict[str, Any]) -> TrainConfig:
    """The train config of one trial: ``base`` (a train config as JSON) with ``point``'s values set."""
    return TrainConfig.model_validate(with_values(base, point))


def with_values(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    for key, value in point.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = copy.deepcopy(value)
    return raw


def space_problems(cfg) -> list[str]:
    """Every bad key, entry and value of ``cfg.sweep.space``, each named, in one list."""
    dims, problems = parse(cfg.sweep.space)
    key_problems = {key: key_problem(key) for key in cfg.sweep.space}
    problems += [problem for problem in key_problems.values() if problem]
    dims = [d for d in dims if not key_problems[d.key]]
    base = cfg.train_raw()
    for dim in dims:
        for value in dim.probes:
            problem = _point_problem(base, {dim.key: value})
            if problem:
                problems.append(f"sweep.space.{dim.key} = {json.dumps(value)}: {problem}")
    combos = 1
    for dim in dims:
        combos *= len(dim.probes)
    if not problems and len(dims) > 1 and combos <= _MAX_COMBINATIONS:
        for values in itertools.product(*(d.probes for d in dims)):
            point = {d.key: v for d, v in zip(dims, values)}
            problem = _point_problem(base, point)
            if problem:
                problems.append(f"sweep.space point {json.dumps(point)}: {problem}")
    return problems


def _point_problem(base: dict[str, Any], point: dict[str, Any]) -> str | None:
    try:
        TrainConfig.model_validate(with_values(base, point))
    except ValidationError as exc:
        return "; ".join(_describe_error(TrainConfig, err) for err in exc.errors())
    return None


def param_space(cfg) -> dict[str, Any]:
    """Ray Tune's param_space: lists are grid_search (search: grid) or choice; distributions sample."""
    from ray import tune

    dims, _ = parse(cfg.sweep.space)
    space: dict[str, Any] = {}
    for dim in dims:
        if dim.values is not None:
            space[dim.key] = tune.grid_search(dim.values) if cfg.sweep.search == "grid" else tune.choice(dim.values)
        elif dim.distribution is None:  # parse() gives every dimension values or a distribution
            raise ValueError(f"sweep.space.{dim.key}: neither values nor a distribution")
        else:
            space[dim.key] = getattr(tune, dim.distribution)(dim.low, dim.high)
    return space


def data_variants(cfg) -> list[dict[str, Any]]:
    """Every combination of the data-changing keys' values (one tokenisation each); [{}] if none."""
    keyed = [(d.key, d.values) for d in parse(cfg.sweep.space)[0] if is_data_key(d.key) and d.values is not None]
    return [{key: v for (key, _), v in zip(keyed, values)} for values in itertools.product(*(vs for _, vs in keyed))]


def data_key(cfg: TrainConfig) -> str:
    """What the tokenised data depends on: trials with equal keys share one tokenisation."""
    return json.dumps([cfg.data.model_dump(mode="json"), cfg.model.name_or_path, cfg.training.seed], sort_keys=True)
