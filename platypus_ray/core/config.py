"""Typed configs: strict YAML plus dotted ``--set key.sub=value`` overrides.

Every stage config is a pydantic model built from :class:`StrictModel`. Unknown keys fail
and list the valid ones; all problems are collected and reported in one
:class:`ConfigError`, before any Ray resources are requested.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from platypus_ray.core.errors import UserError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are re-validated on assignment,
    and no float may be inf or nan (Ray would fail on them only after it has started).

    Schemas are pure: types, ranges and rules across keys. Whether a path exists, a model loads or
    a server answers is the stage's preflight (:mod:`platypus_ray.core.stage`), so a config
    validates the same on a laptop, a Ray worker and a cluster head.

    A section whose ``shorthand`` names one obvious key takes a plain string for it:
    ``model: out/merged`` is ``model: {name_or_path: out/merged}``, as lm-eval and axolotl write it.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    shorthand: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _section_from_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if cls.shorthand is not None:
            return {cls.shorthand: value}
        raise ValueError(
            f"expects a section (a mapping of {', '.join(list(cls.model_fields)[:4])}, ...), got the string {value!r}; "
            "write the section inline, or name a .yaml/.yml file that holds it"
        )


# Ray counts resources in steps of 1e-4 (as int64: amounts above ~9e14 overflow) and rejects a
# nonzero amount below one step, but only once it has started; these bounds fail first.
RAY_RESOURCE_STEP = 1e-4
RAY_RESOURCE_MAX = 1e14  # generous: Ray's `memory` resource is counted in bytes
ActorCount = Annotated[int, Field(ge=1, le=4096)]  # actor-pool size: one model replica per actor
CpusPerActor = Annotated[float, Field(ge=RAY_RESOURCE_STEP, le=1024)]


class ConfigError(UserError, ValueError):
    """A user mistake in a config file or override; the message names every bad key."""


def load_raw(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, or a ConfigError saying why there is none."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded or {}


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read ``path`` (YAML), apply ``key.sub=value`` overrides, validate into ``model``."""
    raw: dict[str, Any] = {}
    config_dir = Path(path).parent if path is not None else Path(".")
    if path is not None:
        raw = _inline_section_files(model, load_raw(path), config_dir)
    for override in overrides or []:
        apply_override(raw, override)
    raw = _inline_section_files(model, raw, config_dir)  # --set train=other.yaml names a file too
    return validate_config(model, raw, origin=str(path) if path else "overrides")


YAML_SUFFIXES = (".yaml", ".yml")


def _inline_section_files(model: type[BaseModel], raw: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """A top-level section given as a string naming a .yaml/.yml file is that file's mapping
    (``train: tiny-cpu.yaml``, as given or relative to the including config's folder), read in
    place so ``--set train.lora.r=8`` reaches into it. Any other string is left to the section's
    schema: a shorthand (``model: out/merged``) or an error showing both forms."""
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if not isinstance(value, str) or field is None or not _section_model(field.annotation):
            continue
        candidates = [Path(value).expanduser(), config_dir / value]
        found = next((c for c in candidates if c.suffix.lower() in YAML_SUFFIXES and c.is_file()), None)
        if found is not None:
            raw[key] = load_raw(found)
        elif Path(value).suffix.lower() in YAML_SUFFIXES:
            raise ConfigError(f"{key}: config file '{value}' does not exist (looked in . and {config_dir})")
    return raw


def _section_model(annotation: Any) -> bool:
    candidates = typing.get_args(annotation) or (annotation,)
    return any(isinstance(c, type) and issubclass(c, BaseModel) for c in candidates)


def validate_config(model: type[M], raw: dict[str, Any], origin: str = "config") -> M:
    """Validate a raw mapping; on failure raise one ConfigError listing every problem."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe_error(model, err) for err in exc.errors()]
        raise ConfigError(f"invalid config ({origin}):\n" + "\n".join(f"  - {line}" for line in lines)) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.0.c=value`` override in place; the value is parsed as YAML."""
    key, sep, value_text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{override}' must look like key.sub=value")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{override}': '{where}' is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override '{override}': '{'.'.join(parts[:i])}' is a value, not a section")


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config next to a run's outputs (what was actually run)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _describe_error(model: type[BaseModel], err: ErrorDetails) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    key = _format_loc(loc)
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{key}: unknown key{suggestion}; valid keys here: {', '.join(valid)}"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if not loc:  # a rule across several keys: the message names them
        return message
    shown = err.get("input")
    if err["type"] not in ("value_error", "assertion_error") and not isinstance(shown, (dict, list)):
        message = f"{message} (got {shown!r})"
    return f"{key}: {message}"


def _format_loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _valid_keys(model: type[BaseModel], loc: list[Any]) -> list[str]:
    """Field names of the (nested) model found at ``loc``; [] if it cannot be resolved."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _model_in(fields[part].annotation)
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside ``list[X]`` / ``X | None`` annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
