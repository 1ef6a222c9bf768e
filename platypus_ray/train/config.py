"""Train stage config: model, data, LoRA, optimisation, DeepSpeed, cluster shape, run storage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from platypus_ray.core.config import RAY_RESOURCE_MAX, RAY_RESOURCE_STEP, StrictModel
from platypus_ray.core.dtypes import DTypeName
from platypus_ray.train.tracking import TrackingSettings, remote_storage_problems

# Named LoRA target sets (LLaMA module names).
TARGET_SETS: dict[str, list[str]] = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],  # what Platypus tuned
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


class ModelSettings(StrictModel):
    """Base model: a hub id (e.g. meta-llama/Llama-2-70b-hf) or a local folder."""

    shorthand = "name_or_path"  # `model: meta-llama/Llama-2-13b-hf`

    name_or_path: str = Field(description="a hub id (meta-llama/Llama-2-70b-hf) or a local model folder")
    dtype: DTypeName = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")


class DataSettings(StrictModel):
    """Training data: the refine stage's ``kept/`` Parquet (a ``messages`` column of conversations
    when present, else the Alpaca columns), formatted with the Alpaca or the model's chat template."""

    path: str = Field(
        "out/refine/kept",
        description="the refine stage's kept/ folder (local or a URI); a pipeline sets it to its refine's",
    )
    val_size: float = Field(0.02, ge=0, description="held-out rows: a fraction (< 1) or a row count (>= 1)")
    cutoff_len: int = Field(4096, ge=8, description="tokens per example after truncation")
    template: Literal["alpaca", "chat", "auto"] = Field(
        "auto",
        description="prompt format: alpaca (Platypus's template; Alpaca columns only), chat (the tokenizer's "
        "apply_chat_template, every assistant turn and its stop token trained), auto: chat when the data has a "
        "messages column, else alpaca",
    )
    chat_template: str | None = Field(
        None,
        description="a Jinja chat template, or the path of a .jinja file holding one, used instead of the "
        "tokenizer's (for tokenizers without one); {% generation %} blocks mark the trained text",
    )
    train_on_inputs: bool = Field(False, description="false: prompt tokens are masked out of the loss (-100)")
    add_eos_token: bool = Field(True, description="append EOS after the response (alpaca; chat: the template's own)")
    shuffle: bool = Field(True, description="shuffle the rows (and the held-out split) with training.seed")
    packing: Literal["none", "packed"] = Field(
        "none",
        description="packed: rows share cutoff_len-token sequences with per-row attention (position ids restart "
        "per row; flash-attention 2 varlen on GPU when installed): fewer, fuller steps. none: one row per sequence, "
        "padded",
    )

    @property
    def chat_template_file(self) -> str | None:
        """``chat_template`` when it names a file rather than holding Jinja text."""
        text = self.chat_template
        return text if text is not None and "{{" not in text and "{%" not in text else None

    @model_validator(mode="after")
    def _template_fits(self) -> DataSettings:
        if self.chat_template is not None and self.template == "alpaca":
            raise ValueError("data.chat_template is set but data.template is alpaca; set data.template: chat or auto")
        if self.chat_template is not None and not self.chat_template.strip():
            raise ValueError("data.chat_template is empty; give Jinja text, a .jinja file, or leave it unset")
        return self


class LoraSettings(StrictModel):
    """LoRA adapter shape. Higher rank: more capacity and memory; Platypus used r=16 on the MLP."""

    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA alpha: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA layers' input")
    target_modules: Literal["attention", "mlp", "all"] | list[str] = Field(
        "mlp",
        description="attention (q, k, v, o_proj), mlp (gate, up, down_proj: what Platypus tuned), all, or a list of "
        "module names",
    )

    @property
    def modules(self) -> list[str]:
        return TARGET_SETS[self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules)

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("give at least one module name, or one of attention | mlp | all")
        return value


class TrainingSettings(StrictModel):
    """Optimisation. global_batch_size = micro_batch_size x workers x gradient accumulation."""

    learning_rate: float = Field(3e-4, gt=0, description="peak learning rate (after warmup)")
    global_batch_size: int = Field(
        16, ge=1, description="rows (packed: sequences) per optimizer step; a multiple of micro x cluster.workers"
    )
    micro_batch_size: int = Field(1, ge=1, description="rows (packed: sequences) per worker per forward pass")
    epochs: int = Field(1, ge=1, description="passes over the training rows")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="the learning-rate schedule after warmup"
    )
    warmup_steps: int = Field(100, ge=0, description="optimizer steps of linear warmup")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping: the largest global gradient norm")
    eval_every: int = Field(50, ge=1, description="optimizer steps between evaluations (and checkpoints)")
    logging_steps: int = Field(1, ge=1, description="optimizer steps between logged metrics (metrics.jsonl)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower steps"
    )
    seed: int = Field(42, description="seeds the held-out split, the shuffle, packing's order and the trainer")


class DeepSpeedSettings(StrictModel):
    """ZeRO-3 shards parameters, gradients and optimizer state across all workers."""

    stage: Literal[2, 3] = Field(
        3, description="ZeRO stage: 3 shards parameters, gradients and optimizer state; 2 gradients and optimizer state"
    )
    offload_optimizer: bool = Field(
        False, description="optimizer state to CPU RAM (DeepSpeed's CPU Adam): less GPU memory, slower steps"
    )
    offload_params: bool = Field(False, description="parameters to CPU RAM (ZeRO-3): less GPU memory, slower steps")
    config_file: str | None = Field(None, description="a full DeepSpeed JSON; replaces the generated config")


class ClusterSettings(StrictModel):
    """Ray Train worker group: one worker per GPU on a GPU cluster."""

    workers: int = Field(8, ge=1, description="Ray Train workers (ranks): one per GPU on a GPU cluster")
    use_gpu: bool = Field(
        True, description="train on GPUs: resources_per_worker must then ask for GPU, and may not otherwise"
    )
    resources_per_worker: dict[str, float] = Field(
        {"GPU": 1, "CPU": 8},
        description="Ray resources each worker reserves; each amount 0 or between 1e-4 and 1e14",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers on nodes (its placement-group strategy)"
    )
    gpus_per_node: int = Field(8, ge=1, description="GPUs per node, for DeepSpeed's memory estimate")
    memory_per_worker_gb: float | None = Field(
        None, gt=0, description="device memory per worker; default 80 on GPU (A100/H100-80GB), RAM / workers on CPU"
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _ray_amounts(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [
            f"{name}={amount:g}"
            for name, amount in value.items()
            if not (amount == 0 or RAY_RESOURCE_STEP <= amount <= RAY_RESOURCE_MAX)
        ]
        if bad:
            raise ValueError(
                f"{', '.join(bad)}: each amount must be 0 or between {RAY_RESOURCE_STEP:g} "
                f"(Ray's smallest step) and {RAY_RESOURCE_MAX:g}"
            )
        return value

    @model_validator(mode="after")
    def _gpu_consistent(self) -> ClusterSettings:
        gpus = self.resources_per_worker.get("GPU", 0)
        if self.use_gpu and gpus <= 0:
            raise ValueError("use_gpu is true but resources_per_worker has no GPU; set GPU: 1 or use_gpu: false")
        if not self.use_gpu and gpus > 0:
            raise ValueError("use_gpu is false but resources_per_worker asks for GPUs; drop GPU or set use_gpu: true")
        return self


class RunSettings(StrictModel):
    """Where checkpoints and results go; a rerun with the same name resumes."""

    name: str = Field(
        "platypus-lora", description="the run's folder under storage_path; a rerun with the same name resumes"
    )
    storage_path: str = Field("out/train", description="a local folder, a shared filesystem, s3:// or gs://")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts from the last checkpoint; -1: forever")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints are kept")
    placement_retries: int = Field(
        -1,
        ge=-1,
        description="after a lost node, how many times Ray Train retries placing the worker group "
        "(each try waits run.placement_timeout_s); -1: forever (an autoscaler may be adding nodes)",
    )
    placement_timeout_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="how long one try to place the worker group waits for its "
        "resources; null: RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S from the environment, else Ray's 60 s",
    )

    @property
    def run_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def adapter_path(self) -> str:
        """Where the trained adapter is exported once the run finishes."""
        return f"{self.run_dir}/adapter"


class TrainConfig(StrictModel):
    """Root config of ``platypus-ray train``."""

    model: ModelSettings = Field(description="the base model; a string is its name_or_path")
    data: DataSettings = Field(DataSettings(), description="the training rows and their prompt format")
    lora: LoraSettings = Field(LoraSettings(), description="the LoRA adapter's shape")
    training: TrainingSettings = Field(TrainingSettings(), description="optimisation")
    deepspeed: DeepSpeedSettings = Field(DeepSpeedSettings(), description="DeepSpeed ZeRO")
    cluster: ClusterSettings = Field(ClusterSettings(), description="the Ray Train worker group")
    run: RunSettings = Field(RunSettings(), description="where checkpoints and results go; retries")
    tracking: TrackingSettings = Field(TrackingSettings(), description="MLflow and TensorBoard")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        per_step = self.training.micro_batch_size * self.cluster.workers
        if self.training.global_batch_size % per_step:
            raise ValueError(
                f"training.global_batch_size ({self.training.global_batch_size}) must be a multiple of "
                "training.micro_batch_size x cluster.workers "
                f"({self.training.micro_batch_size} x {self.cluster.workers})"
            )
        problems = remote_storage_problems(self.tracking, self.run.storage_path)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.training.global_batch_size // (self.training.micro_batch_size * self.cluster.workers)
