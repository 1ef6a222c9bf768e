"""Evaluate stage config: the model (and an optional one to compare with), benchmarks, held-out rows.

A benchmark entry is an lm-evaluation-harness task (``{task: arc_challenge, num_fewshot: 25}``,
or a task YAML of your own: ``{task: my_task, include_path: tasks/}``) or a benchmark file in one
of the formats refine's contamination check reads (``{path:, format:}``), which evaluate turns
into a thin lm-eval task YAML. ``benchmarks: open_llm_leaderboard`` is the leaderboard four.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from platypus_ray.core.config import ActorCount, CpusPerActor, StrictModel
from platypus_ray.core.dtypes import DTypeName
from platypus_ray.core.stage import Input
from platypus_ray.testsets import BenchmarkConfig


class TaskEntry(StrictModel):
    """One lm-evaluation-harness task or group, by the name lm-eval knows it by."""

    task: str = Field(min_length=1, description="the lm-eval task or group (arc_challenge, mmlu, or your own)")
    num_fewshot: int | None = Field(None, ge=0, description="default: the task's own (0 when it sets none)")
    include_path: str | None = Field(
        None, description="a folder of task YAMLs (your own tasks, or local data_files copies)"
    )

    def inputs(self, key: str) -> list[Input]:
        """The folder this entry reads (``key``: where it sits in the config, ``benchmarks[0]``)."""
        if self.include_path is None:
            return []
        return [Input(f"{key}.include_path", self.include_path, "folder", hint="give a folder of task YAMLs")]

    @property
    def benchmark_name(self) -> str:
        return self.task


BenchmarkEntry = TaskEntry | BenchmarkConfig

# The Open LLM Leaderboard (v1) tasks the Platypus paper reports, with the leaderboard's shots.
LEADERBOARD = [
    {"task": "arc_challenge", "num_fewshot": 25},
    {"task": "hellaswag", "num_fewshot": 10},
    {"task": "mmlu", "num_fewshot": 5},
    {"task": "truthfulqa_mc2", "num_fewshot": 0},
]
PRESETS = {"open_llm_leaderboard": LEADERBOARD}


def expand_preset(value: Any) -> Any:
    """``benchmarks: open_llm_leaderboard`` -> its task entries; anything else unchanged."""
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown benchmarks preset '{value}'; valid: {sorted(PRESETS)} or a list of entries")
        return [dict(entry) for entry in PRESETS[value]]
    return value


class ModelRef(StrictModel):
    """A causal LM: a hub id or a local folder (e.g. ``out/merged``), optionally plus a LoRA adapter."""

    shorthand = "name_or_path"  # `model: out/merged`, as lm-eval's and axolotl's configs write it

    name_or_path: str = Field(description="a hub id or a local model folder (out/merged)")
    adapter: str | None = Field(None, description="a LoRA adapter folder; merged into the model in each actor")
    dtype: DTypeName = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    label: str | None = Field(
        None, description="the model's column in the tables; default: the folder or hub name (+ the adapter's)"
    )

    def inputs(self, key: str) -> list[Input]:
        """The model (and adapter) this entry reads, under ``key`` (``model``, ``compare_with``)."""
        found = [Input(f"{key}.name_or_path", self.name_or_path, "model")]
        return found + ([Input(f"{key}.adapter", self.adapter, "adapter")] if self.adapter else [])

    @property
    def display_name(self) -> str:
        if self.label:
            return self.label
        name = self.name_or_path.rstrip("/").split("/")[-1]
        return f"{name}+{self.adapter.rstrip('/').split('/')[-1]}" if self.adapter else name


class ValidationSettings(StrictModel):
    """Held-out loss: rows in the kept/ schema, formatted and masked exactly as training does."""

    path: str = Field(description="held-out rows in refine's kept/ schema (a kept/ folder or Parquet file)")
    rows: int = Field(500, ge=1, description="the first N rows are scored")
    add_eos_token: bool = Field(True, description="append EOS after the response, as training does")


class VllmSettings(StrictModel):
    """The vLLM engine of generation requests (``inference.engine: vllm``, or ``auto`` on GPUs)."""

    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per vLLM engine (one model split across them); engines: inference.actors"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="share of each GPU's memory vLLM takes for weights and KV cache"
    )


class InferenceSettings(StrictModel):
    """The Ray Data actor pool that scores: one model replica per actor (one GPU each on a cluster)."""

    actors: ActorCount = Field(1, description="actor pool size; one model replica (and one GPU) per actor")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the cluster has GPUs")
    cpus_per_actor: CpusPerActor = Field(1.0, description="CPUs each actor reserves (its threads on CPU)")
    max_length: int | None = Field(
        None,
        ge=8,
        description="tokens per sequence (left-truncated; vLLM's max_model_len); default: the model's context",
    )
    timeout_s: float = Field(
        3600.0, gt=0, description="per batch of requests; a generation past it fails naming its task and document"
    )
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="what generates (generate_until): auto: vllm when it is installed and the run has GPUs, else "
        "transformers; log-likelihoods are always scored by transformers",
    )
    vllm: VllmSettings = Field(VllmSettings(), description="the vLLM engine, when it generates")


class PromptSettings(StrictModel):
    """How lm-eval renders the prompts (``simple_evaluate``'s arguments of the same names)."""

    apply_chat_template: bool = Field(
        False, description="render prompts with each model's own tokenizer chat template (instruct models)"
    )
    system_instruction: str | None = Field(
        None, description="a system turn (without a template: plain text before the prompt), as lm-eval's"
    )
    fewshot_as_multiturn: bool | None = Field(
        None, description="few-shot examples as user/assistant turns; default: apply_chat_template's value"
    )

    @property
    def multiturn(self) -> bool:
        return self.apply_chat_template if self.fewshot_as_multiturn is None else self.fewshot_as_multiturn

    @model_validator(mode="after")
    def _multiturn_needs_template(self) -> PromptSettings:
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ValueError("fewshot_as_multiturn: true needs apply_chat_template: true (turns need a chat template)")
        return self


class EvaluateConfig(StrictModel):
    """Root config of ``platypus-ray evaluate``."""

    model: ModelRef = Field(description="the model scored; a string is its name_or_path")
    compare_with: ModelRef | None = Field(
        None, description="a second model (e.g. the base), scored side by side with a delta column"
    )
    benchmarks: list[BenchmarkEntry] = Field(
        [],
        description="lm-eval task entries and benchmark files, or the preset open_llm_leaderboard (arc_challenge "
        "25-shot, hellaswag 10, mmlu 5, truthfulqa_mc2 0)",
    )
    validation: ValidationSettings | None = Field(
        None, description="held-out loss on rows formatted and masked as training does"
    )
    inference: InferenceSettings = Field(InferenceSettings(), description="the Ray Data actor pool that scores")
    prompt: PromptSettings = Field(
        PromptSettings(), description="lm-eval's prompt options: chat template, system instruction, multi-turn shots"
    )
    output: str = Field(
        "out/eval",
        description="the folder evaluate writes (items.parquet, samples/, validation.parquet, summary.json), "
        "replaced whole",
    )
    limit: int | None = Field(
        None, ge=1, description="score only the first N documents of each task (lm-eval's --limit)"
    )
    seed: int = Field(
        1234, description="lm-eval's fewshot_random_seed (its default): the draws of tasks with a random sampler"
    )

    _preset = field_validator("benchmarks", mode="before")(classmethod(lambda cls, value: expand_preset(value)))

    def inputs(self) -> list[Input]:
        """Every path an evaluation reads: models, adapters, benchmark files and task folders, held-out rows."""
        found = self.model.inputs("model") + (self.compare_with.inputs("compare_with") if self.compare_with else [])
        found += [item for i, entry in enumerate(self.benchmarks) for item in entry.inputs(f"benchmarks[{i}]")]
        if self.validation is not None:
            found.append(Input("validation.path", self.validation.path, "path"))
        return found

    @model_validator(mode="after")
    def _something_to_do(self) -> EvaluateConfig:
        if not self.benchmarks and self.validation is None:
            raise ValueError("give benchmarks, a validation set, or both")
        names = [b.benchmark_name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique (got {names}); set `name:` on each")
        if self.compare_with is not None and self.compare_with.display_name == self.model.display_name:
            raise ValueError("model and compare_with have the same label; set `label:` on one of them")
        return self
