"""``platypus-ray pipeline`` (``jobs/pipeline.py``): refine → train → merge → evaluate in one job.

Each stage's output feeds the next, handed over as typed results: train reads refine's
``kept_path``, merge folds train's ``adapter_path`` into the base model, evaluate scores the
merged model (or base plus adapter when there is no merge) against the base. The pipeline's
preflight is the union of its sections' preflights, run before any work: every section's inputs,
outputs and checks before Ray starts (a path an earlier section writes counts as present), then
every cluster check, so a bad train or evaluate section never costs a refine run.
A section may be inline or name a stage's YAML file: ``train: tiny-cpu.yaml``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator, model_validator

from platypus_ray.core.config import StrictModel
from platypus_ray.core.dtypes import DTypeName
from platypus_ray.core.models import is_model_folder
from platypus_ray.core.paths import absolute_if_local
from platypus_ray.core.stage import Stage
from platypus_ray.evaluate.config import (
    BenchmarkEntry,
    EvaluateConfig,
    InferenceSettings,
    ValidationSettings,
    expand_preset,
)
from platypus_ray.merge import MergeConfig
from platypus_ray.refine.config import RefineConfig, kept_folder
from platypus_ray.train.config import TrainConfig

logger = logging.getLogger(__name__)


class MergeStep(StrictModel):
    """Merge settings; the adapter is the one the train section produces."""

    out: str = Field("out/merged", description="the folder the merged model and tokenizer are written to")
    base: str | None = Field(
        None, description="default: train.model.name_or_path (or give another fine-tune of the same base)"
    )
    dtype: DTypeName = Field("auto", description="the merge's dtype; auto: the base's saved dtype")
    timeout_s: float = Field(7200.0, gt=0, description="bound on the merge task (it loads and saves the whole model)")


class EvaluateStep(StrictModel):
    """Evaluate settings; the model is the pipeline's fine-tune (merged, or base + adapter)."""

    benchmarks: list[BenchmarkEntry] = Field(
        [], description="lm-eval tasks or benchmark files, or a preset, as in platypus-ray evaluate"
    )
    validation: ValidationSettings | None = Field(
        None, description="held-out loss on rows formatted and masked as training does"
    )
    inference: InferenceSettings = Field(InferenceSettings(), description="the Ray Data actor pool that scores")
    output: str = Field("out/eval", description="the folder evaluate writes, as in platypus-ray evaluate")
    compare_with_base: bool = Field(True, description="also score train.model.name_or_path, side by side")
    limit: int | None = Field(None, ge=1, description="score only the first N documents of each task")
    seed: int = Field(1234, description="lm-eval's fewshot_random_seed")

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

    build_tiny_model: bool = Field(
        False, description="first build the tiny LLaMA at train.model.name_or_path if missing (demo, tests)"
    )
    refine: RefineConfig | None = Field(None, description="a refine config, inline or the name of its YAML file")
    train: TrainConfig | None = Field(
        None, description="a train config, inline or a YAML file; with refine, data.path is refine's kept/"
    )
    merge: MergeStep | None = Field(None, description="fold the trained adapter into the base (needs train)")
    evaluate: EvaluateStep | None = Field(None, description="score the fine-tune, and the base (needs train)")

    @model_validator(mode="before")
    @classmethod
    def _link_stages(cls, raw: Any) -> Any:
        """Point train at the rows refine keeps (``RefineConfig.kept_path``)."""
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("refine"), dict)
            or not isinstance(raw.get("train"), dict)
        ):
            return raw
        refine = (
            RefineConfig.model_fields["output"].default if "output" not in raw["refine"] else raw["refine"]["output"]
        )
        train = raw["train"]
        if isinstance(refine, str):
            raw["train"] = {**train, "data": {**(train.get("data") or {}), "path": kept_folder(refine)}}
        return raw

    @model_validator(mode="after")
    def _merge_needs_train(self) -> PipelineConfig:
        if self.merge is not None and self.train is None:
            raise ValueError("merge: needs a train section (the adapter to merge comes from it)")
        if self.evaluate is not None and self.train is None:
            raise ValueError(
                "evaluate: needs a train section (it scores the fine-tune); "
                "use `platypus-ray evaluate` for a model you have"
            )
        if self.evaluate is not None and not (self.evaluate.benchmarks or self.evaluate.validation):
            raise ValueError("evaluate: give benchmarks, a validation set, or both")
        if self.build_tiny_model and self.train is None:
            raise ValueError("build_tiny_model: needs a train section (the model is built at train.model.name_or_path)")
        if not (self.refine or self.train):
            raise ValueError("give at least one stage: refine, train (and merge)")
        return self

    def merge_config(self, adapter: str | None = None) -> MergeConfig:
        """The merge stage's config: ``adapter`` (train's result), else where train will write it."""
        if self.train is None or self.merge is None:
            raise ValueError("merge_config: the pipeline has no train and merge sections")
        return MergeConfig(
            base=absolute_if_local(self.merge.base or self.train.model.name_or_path),
            adapter=absolute_if_local(adapter or self.train.run.adapter_path),
            out=os.path.abspath(self.merge.out),
            dtype=self.merge.dtype,
        )

    def evaluate_config(self, adapter: str | None = None) -> EvaluateConfig:
        """The evaluate stage's config: the merged model, or the base plus ``adapter`` (train's result)."""
        if self.train is None or self.evaluate is None:
            raise ValueError("evaluate_config: the pipeline has no train and evaluate sections")
        base = self.train.model.name_or_path
        adapter = adapter or self.train.run.adapter_path
        model = {"name_or_path": self.merge.out} if self.merge else {"name_or_path": base, "adapter": adapter}
        return self.evaluate.evaluate_config(model, base)


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


class PipelineStage(Stage[PipelineConfig, dict[str, Any], PipelineResult]):
    """Every section's stage, in order; its preflight is theirs together."""

    name = "pipeline"
    config = PipelineConfig

    def sections(self, cfg: PipelineConfig) -> list[tuple[str, Stage, Any]]:
        """(section, its stage, its stage config), in run order. Imported here: the stages pull in Ray."""
        from platypus_ray import merge
        from platypus_ray.evaluate.stage import STAGE as EVALUATE
        from platypus_ray.refine.stage import STAGE as REFINE
        from platypus_ray.train.stage import STAGE as TRAIN

        found: list[tuple[str, Stage, Any]] = []
        if cfg.refine is not None:
            found.append(("refine", REFINE, cfg.refine))
        if cfg.train is not None:
            found.append(("train", TRAIN, cfg.train))
        if cfg.merge is not None:
            found.append(("merge", merge.STAGE, cfg.merge_config()))
        if cfg.evaluate is not None:
            found.append(("evaluate", EVALUATE, cfg.evaluate_config()))
        return found

    def preflight(self, cfg: PipelineConfig, planned: Any = ()) -> dict[str, Any]:
        """Each section's checks before Ray starts, told what the sections before it write (and the
        tiny model build_tiny_model makes), then each section's cluster checks."""
        planned = set(planned)
        if cfg.build_tiny_model and cfg.train is not None:
            planned.add(cfg.train.model.name_or_path)
        checked = {}
        sections = self.sections(cfg)
        for name, stage, section in sections:
            checked[name] = stage.check_before_ray(section, planned, prefix=f"{name}.")
            planned.update(out.path for out in stage.outputs(section))
        from platypus_ray.core.runtime import init_ray

        init_ray()
        for _, stage, section in sections:
            stage.check_cluster(section)
        return checked

    def execute(self, cfg: PipelineConfig, checked: dict[str, Any]) -> PipelineResult:
        return _pipeline(cfg, checked)


STAGE = PipelineStage()
run = STAGE.run


def _pipeline(cfg: PipelineConfig, checked: dict[str, Any]) -> PipelineResult:
    from platypus_ray.evaluate.stage import STAGE as EVALUATE
    from platypus_ray.refine.stage import STAGE as REFINE
    from platypus_ray.train.stage import STAGE as TRAIN

    result = PipelineResult()

    def step(name: str, output: str, fn, *args) -> Any:
        start = time.perf_counter()
        logger.info("pipeline: %s ...", name)
        out = fn(*args)
        result.timings_s[name] = round(time.perf_counter() - start, 1)
        result.stages.append((name, out))
        result.outputs[name] = output
        logger.info("%s\n", out.summary())
        return out

    if cfg.build_tiny_model and cfg.train is not None and not is_model_folder(cfg.train.model.name_or_path):
        from platypus_ray.devtools import tiny_model

        model = cfg.train.model.name_or_path
        step("make-tiny-model", model, tiny_model.run, tiny_model.TinyModelConfig(out=model))
    train_cfg = cfg.train
    if cfg.refine is not None:
        refined = step("refine", cfg.refine.output, REFINE.execute, cfg.refine, checked["refine"])
        if train_cfg is not None:
            data = train_cfg.data.model_copy(update={"path": str(refined.kept_path)})
            train_cfg = train_cfg.model_copy(update={"data": data})
    if train_cfg is not None:
        trained = step("train", train_cfg.run.adapter_path, TRAIN.execute, train_cfg, checked["train"])
        if cfg.merge is not None:
            merge_cfg = cfg.merge_config(trained.adapter_path)
            step("merge", merge_cfg.out, merge_on_cluster, merge_cfg, cfg.merge.timeout_s)
        if cfg.evaluate is not None:
            evaluate_cfg = cfg.evaluate_config(trained.adapter_path)
            step("evaluate", cfg.evaluate.output, EVALUATE.execute, evaluate_cfg, checked["evaluate"])
    return result


def merge_on_cluster(cfg: MergeConfig, timeout_s: float):
    """Merge in a Ray task that reserves the memory it needs, so on a cluster it lands on a
    node that can hold the whole model (the head node is small and runs no work). Paths are
    absolute: the task's working folder is not the driver's."""
    import ray

    from platypus_ray import merge
    from platypus_ray.core.waits import bounded_by, wait_all

    task = ray.remote(merge.run).options(num_cpus=1, memory=merge.memory_needed(cfg))
    fix = "the cluster may lack a node with the memory it reserves, or raise the bound"
    with bounded_by("merge.timeout_s", "merge task", fix):
        (merged,) = wait_all([task.remote(cfg)], timeout_s)
    return merged
