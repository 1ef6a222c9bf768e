"""``platypus-ray pipeline`` (``jobs/pipeline.py``): refine → train → merge → evaluate in one job.

Each stage's output feeds the next: train reads refine's ``kept/`` rows, merge folds the
trained adapter into train's base model, evaluate scores the merged model (or base plus
adapter when there is no merge) against the base. Every section is validated before anything runs
(inputs an earlier stage will write count as present), and the train run folder, tracking server
and cluster shape are checked before refine starts, so a bad train section never costs a refine run.
A section may be inline or name a stage's YAML file: ``train: tiny-cpu.yaml``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from platypus_ray.core.config import StrictModel
from platypus_ray.core.dtypes import DTypeName
from platypus_ray.core.outputs import check_output
from platypus_ray.core.paths import absolute_if_local
from platypus_ray.devtools.tiny_model import TinyModelConfig
from platypus_ray.evaluate.config import (
    BenchmarkEntry,
    EvaluateConfig,
    InferenceSettings,
    ValidationSettings,
    benchmark_inputs,
    expand_preset,
)
from platypus_ray.merge import MergeConfig
from platypus_ray.refine.config import RefineConfig
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.tracking import check_reachable


class MergeStep(StrictModel):
    """Merge settings; the adapter is the one the train section produces."""

    out: str = "out/merged"
    base: str | None = None  # default: train.model.name_or_path (or another fine-tune of the same base)
    dtype: DTypeName = "auto"


class EvaluateStep(StrictModel):
    """Evaluate settings; the model is the pipeline's fine-tune (merged, or base + adapter)."""

    benchmarks: list[BenchmarkEntry] = []  # lm-eval tasks or benchmark files, as in `platypus-ray evaluate`
    validation: ValidationSettings | None = None
    inference: InferenceSettings = InferenceSettings()
    output: str = "out/eval"
    compare_with_base: bool = True  # also score train.model.name_or_path, side by side
    limit: int | None = Field(None, ge=1)
    seed: int = 1234

    _preset = field_validator("benchmarks", mode="before")(classmethod(lambda cls, value: expand_preset(value)))

    def evaluate_config(self, model: dict, base: str) -> EvaluateConfig:
        compare = {"name_or_path": base, "label": "base"} if self.compare_with_base else None
        return EvaluateConfig.model_validate(
            {
                **self.model_dump(exclude={"compare_with_base"}),
                "model": {**model, "label": "fine-tuned"},
                "compare_with": compare,
            }
        )


class PipelineConfig(StrictModel):
    """Root config of ``platypus-ray pipeline``; every section is optional, in stage order."""

    build_tiny_model: bool = False  # first build the tiny LLaMA at train.model.name_or_path if missing (demo, tests)
    refine: RefineConfig | None = None
    train: TrainConfig | None = None
    merge: MergeStep | None = None
    evaluate: EvaluateStep | None = None

    @model_validator(mode="before")
    @classmethod
    def _link_stages(cls, raw: Any, info: ValidationInfo) -> Any:
        """Point train at refine's output and mark what earlier stages will write as planned."""
        if not isinstance(raw, dict):
            return raw
        planned = info.context.setdefault("planned", set()) if info.context is not None else set()
        train = raw.get("train")
        if isinstance(raw.get("refine"), dict) and isinstance(train, dict):
            output = raw["refine"].get("output", RefineConfig.model_fields["output"].default)
            train = raw["train"] = {
                **train,
                "data": {**(train.get("data") or {}), "path": f"{output.rstrip('/')}/kept"},
            }
            planned.add(os.path.normpath(os.path.expanduser(output)))
        model = ((train or {}).get("model") or {}).get("name_or_path") if isinstance(train, dict) else None
        if raw.get("build_tiny_model") is True and isinstance(model, str):
            planned.add(os.path.normpath(os.path.expanduser(model)))
        return raw

    @model_validator(mode="after")
    def _merge_needs_train(self) -> PipelineConfig:
        if self.merge is not None and self.train is None:
            raise ValueError("merge: needs a train section (the adapter to merge comes from it)")
        if self.evaluate is not None and self.train is None:
            raise ValueError(
                "evaluate: needs a train section (it scores the fine-tune); use `platypus-ray evaluate` for a model you have"
            )
        if self.evaluate is not None and not (self.evaluate.benchmarks or self.evaluate.validation):
            raise ValueError("evaluate: give benchmarks, a validation set, or both")
        if self.build_tiny_model and self.train is None:
            raise ValueError("build_tiny_model: needs a train section (the model is built at train.model.name_or_path)")
        if not (self.refine or self.train):
            raise ValueError("give at least one stage: refine, train (and merge)")
        return self


@dataclass
class PipelineResult:
    stages: list[tuple[str, Any]] = field(default_factory=list)  # (stage, its result), in run order
    timings_s: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per stage (each printed its full summary when it finished)."""
        lines = [f"pipeline: done in {sum(self.timings_s.values()):.0f}s"]
        lines += [f"  {name:<16}{self.timings_s[name]:>7.0f}s  {self.outputs.get(name, '')}" for name, _ in self.stages]
        return "\n".join(lines)


def run(cfg: PipelineConfig) -> PipelineResult:
    from platypus_ray.core.runtime import init_ray

    result = PipelineResult()

    def step(name: str, output: str, fn, *args) -> Any:
        start = time.perf_counter()
        print(f"pipeline: {name} ...", flush=True)
        out = fn(*args)
        result.timings_s[name] = round(time.perf_counter() - start, 1)
        result.stages.append((name, out))
        result.outputs[name] = output
        print(out.summary(), "\n", flush=True)
        return out

    # Outputs are checked before Ray starts, train's run folder too (prepare checks it again: cheap).
    if cfg.refine is not None:
        cfg.refine.check_output("refine.output")
    if cfg.evaluate is not None:
        from platypus_ray.evaluate.tasks import check_loadable

        check_output(cfg.evaluate.output, "evaluate.output", inputs=benchmark_inputs(cfg.evaluate.benchmarks))
        check_loadable(cfg.evaluate.benchmarks, cfg.evaluate.seed)  # an offline-unloadable task fails before refine
    if cfg.merge is not None:
        check_output(cfg.merge.out, "merge.out", inputs=[cfg.merge.base or cfg.train.model.name_or_path])
    if cfg.train is not None:  # an unreachable tracking server fails before Ray starts and refine runs
        from platypus_ray.train.resume import check_run_folder
        from platypus_ray.train.stage import resolve_local_paths

        check_run_folder(resolve_local_paths(cfg.train))
        check_reachable(cfg.train.tracking.mlflow_uri(cfg.train.run.storage_path))
    init_ray()
    if cfg.train is not None:
        from platypus_ray.train.capacity import check_cluster_fits

        check_cluster_fits(cfg.train.cluster)  # before refine runs: a train shape that cannot fit fails now
    if cfg.build_tiny_model and not os.path.isfile(os.path.join(cfg.train.model.name_or_path, "config.json")):
        from platypus_ray.devtools import tiny_model

        step(
            "make-tiny-model",
            cfg.train.model.name_or_path,
            tiny_model.run,
            TinyModelConfig(out=cfg.train.model.name_or_path),
        )
    if cfg.refine is not None:
        from platypus_ray import refine

        step("refine", cfg.refine.output, refine.run, cfg.refine)
    if cfg.train is not None:
        from platypus_ray import train

        trained = step("train", cfg.train.run.adapter_path, train.run, cfg.train)
        if cfg.merge is not None:
            base = cfg.merge.base or cfg.train.model.name_or_path
            merge_cfg = MergeConfig(
                base=absolute_if_local(base),
                adapter=absolute_if_local(trained.adapter_path),
                out=os.path.abspath(cfg.merge.out),
                dtype=cfg.merge.dtype,
            )
            step("merge", merge_cfg.out, merge_on_cluster, merge_cfg)
        if cfg.evaluate is not None:
            from platypus_ray import evaluate

            base = cfg.train.model.name_or_path
            model = (
                {"name_or_path": cfg.merge.out}
                if cfg.merge
                else {"name_or_path": base, "adapter": trained.adapter_path}
            )
            step("evaluate", cfg.evaluate.output, evaluate.run, cfg.evaluate.evaluate_config(model, base))
    return result


def merge_on_cluster(cfg: MergeConfig):
    """Merge in a Ray task that reserves the memory it needs, so on a cluster it lands on a
    node that can hold the whole model (the head node is small and runs no work). Paths are
    absolute: the task's working folder is not the driver's."""
    import ray

    from platypus_ray import merge

    task = ray.remote(merge.run).options(num_cpus=1, memory=merge.memory_needed(cfg))
    return ray.get(task.remote(cfg))
