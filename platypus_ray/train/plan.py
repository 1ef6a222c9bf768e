"""The launch plan: cluster shape, batch arithmetic, step counts and a ZeRO-3 memory estimate.

Printed before any worker starts; a shape that cannot fit is refused with the numbers.
Parameter counts come from the model's config on the meta device: nothing is allocated,
so planning a 70B run takes a second on a laptop.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from platypus_ray.core.dtypes import BYTES, resolve_dtype
from platypus_ray.core.errors import UserError
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.tracking import TrackingTarget

if TYPE_CHECKING:
    from platypus_ray.train.data import TokenizedData

GIB = 1024**3


@dataclass
class ModelSize:
    """Parameter counts read from a model config without allocating weights."""

    total: int
    largest_layer: int
    lora: int
    hidden_size: int
    layers: int
    vocab_size: int
    position_ids: bool = True  # the model's forward takes position_ids (packing needs it)


def model_size(cfg: TrainConfig) -> ModelSize | None:
    """Counts for ``cfg.model`` with ``cfg.lora`` applied; None when the config is not reachable."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(cfg.model.name_or_path)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    lora = sum(
        cfg.lora.r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in cfg.lora.modules
    )
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    return ModelSize(
        total, largest, lora, config.hidden_size, config.num_hidden_layers, config.vocab_size, takes_positions
    )


@dataclass
class WorkerPlan:
    """Everything a Ray Train worker is handed: the resolved config and what the driver decided."""

    config: dict[str, Any]  # the resolved TrainConfig as JSON; workers re-validate it
    deepspeed: dict[str, Any]
    total_steps: int
    steps_per_epoch: int
    train_rows: int
    has_validation: bool
    scratch_dir: str  # per-worker Hugging Face output folder (removed at the end)
    fault_marker: str
    inject_fault_at_step: int | None = None  # fault drills: the last rank raises once at this step
    chat_template: str | None = None  # the Jinja text the rows were rendered with: saved with the tokenizer
    tracking: TrackingTarget = field(default_factory=TrackingTarget)


@dataclass
class TrainPlan:
    cfg: TrainConfig
    size: ModelSize | None
    train_rows: int
    validation_rows: int
    train_tokens: int
    dropped_rows: int
    train_sequences: int = 0  # packed sequences (data.packing: packed); 0: one row per sequence
    truncated_rows: int = 0
    template: str = "alpaca"  # the prompt format the rows were tokenised with: alpaca or chat

    @classmethod
    def for_data(cls, cfg: TrainConfig, size: ModelSize | None, data: TokenizedData) -> TrainPlan:
        """The plan of ``cfg`` over tokenised ``data``."""
        return cls(
            cfg,
            size,
            data.train_rows,
            data.validation_rows,
            data.train_tokens,
            data.dropped_rows,
            data.train_sequences,
            data.truncated_rows,
            "alpaca" if data.chat_template is None else "chat",
        )

    @property
    def sequences(self) -> int:
        return self.train_sequences or self.train_rows

    @property
    def packing_efficiency(self) -> float:
        """Real tokens over the token capacity of the sequences the workers step through."""
        return self.train_tokens / (self.sequences * self.cfg.data.cutoff_len) if self.sequences else 0.0

    @property
    def steps_per_epoch(self) -> int:
        per_worker = self.sequences // self.cfg.cluster.workers
        return per_worker // self.cfg.training.micro_batch_size // self.cfg.gradient_accumulation_steps

    @property
    def total_steps(self) -> int:
        return self.cfg.training.max_steps or self.steps_per_epoch * self.cfg.training.epochs

    @property
    def param_bytes(self) -> int:
        return BYTES[resolve_dtype(self.cfg.model.dtype, self.cfg.cluster.use_gpu)]

    def memory_per_worker(self) -> float | None:
        """Estimated bytes per worker for LoRA under ZeRO-3 (DeepSpeed's own estimator assumes full
        fine-tuning). Base weights sharded; LoRA weights with fp32 master, grads and Adam (~18 B)
        sharded; two gathered layers in flight; activations (34 B/token/hidden/layer in 16-bit,
        about 2 with gradient checkpointing) and fp32 logits for one micro batch."""
        if self.size is None:
            return None
        world = self.cfg.cluster.workers
        base = self.size.total * self.param_bytes / (world if self.cfg.deepspeed.stage == 3 else 1)
        if self.cfg.deepspeed.offload_params:
            base = 0
        lora = self.size.lora * 18 / world
        gathered = 2 * self.size.largest_layer * self.param_bytes
        tokens = self.cfg.training.micro_batch_size * self.cfg.data.cutoff_len
        per_layer = (2 if self.cfg.training.gradient_checkpointing else 34) * tokens * self.size.hidden_size
        activations = per_layer * self.size.layers * self.param_bytes / 2 + 34 * tokens * self.size.hidden_size
        logits = 3 * tokens * self.size.vocab_size * 4
        return base + lora + gathered + activations + logits

    def capacity_per_worker(self) -> float:
        if self.cfg.cluster.memory_per_worker_gb is not None:
            return self.cfg.cluster.memory_per_worker_gb * GIB
        if self.cfg.cluster.use_gpu:
            return 80 * GIB  # the A100/H100-80GB class the presets are sized for
        import psutil

        return psutil.virtual_memory().total / self.cfg.cluster.workers

    def render(self) -> str:
        c, t = self.cfg, self.cfg.training
        device = f"{c.cluster.workers} x {c.cluster.resources_per_worker}"
        lines = [
            "train plan:",
            f"  model        {c.model.name_or_path} ({self._params()})",
            f"  lora         r={c.lora.r} alpha={c.lora.alpha} dropout={c.lora.dropout} on {', '.join(c.lora.modules)}"
            + (f" ({self.size.lora:,} trainable)" if self.size else ""),
            f"  workers      {device}, {'GPU' if c.cluster.use_gpu else 'CPU'}, DeepSpeed ZeRO-{c.deepspeed.stage}"
            + (" + optimizer offload" if c.deepspeed.offload_optimizer else "")
            + (" + param offload" if c.deepspeed.offload_params else ""),
            f"  batch        global {t.global_batch_size} = micro {t.micro_batch_size} x {c.cluster.workers} workers"
            f" x {c.gradient_accumulation_steps} accumulation",
            f"  data         {self.train_rows} train rows ({self.train_tokens:,} tokens), "
            f"{self.validation_rows} validation"
            + (
                f", {self.dropped_rows} dropped (no response token within cutoff_len {c.data.cutoff_len})"
                if self.dropped_rows
                else ""
            )
            + (f", {self.truncated_rows} truncated at cutoff_len" if self.truncated_rows else "")
            + ("" if self.template == "alpaca" else f"; {self.template} template"),
            f"  packing      {c.data.packing}: {self.sequences} sequences of <= {c.data.cutoff_len} tokens, "
            f"efficiency {self.packing_efficiency:.2f} (real tokens / capacity)"
            + (_packed_gpu_attention() if c.data.packing == "packed" and c.cluster.use_gpu else ""),
            f"  steps        {self.total_steps} optimizer steps ({self.steps_per_epoch}/epoch), "
            f"warmup {t.warmup_steps},"
            f" eval + checkpoint every {t.eval_every}",
        ]
        memory = self.memory_per_worker()
        if memory is not None:
            lines.append(
                f"  memory       ~{memory / GIB:.2f} GiB per worker (LoRA + ZeRO-{c.deepspeed.stage} estimate) of "
                f"{self.capacity_per_worker() / GIB:.1f} GiB; DeepSpeed full fine-tune estimate: "
                f"{self._deepspeed_estimate()}"
            )
        return "\n".join(lines)

    def params(self) -> dict[str, str]:
        """The plan's numbers as tracking params."""
        memory = self.memory_per_worker()
        numbers = {
            "train_rows": self.train_rows,
            "validation_rows": self.validation_rows,
            "train_tokens": self.train_tokens,
            "dropped_rows": self.dropped_rows,
            "truncated_rows": self.truncated_rows,
            "template": self.template,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "train_sequences": self.sequences,
            "packing_efficiency": f"{self.packing_efficiency:.4f}",
            "memory_per_worker_gib": "unknown" if memory is None else f"{memory / GIB:.3f}",
        }
        return {f"plan.{k}": str(v) for k, v in numbers.items()}

    def check(self) -> None:
        """Refuse shapes that cannot train: no optimizer step, or more memory than a worker has."""
        c = self.cfg
        if self.total_steps < 1:
            raise UserError(
                f"{self.train_rows} training rows ({self.sequences} sequences) give no optimizer step "
                "with training.global_batch_size "
                f"{c.training.global_batch_size}; lower it or add data"
            )
        self._check_packing()
        memory = self.memory_per_worker()
        capacity = self.capacity_per_worker()
        if memory is not None and memory > 0.9 * capacity:
            raise UserError(
                f"estimated {memory / GIB:.1f} GiB per worker does not fit in {capacity / GIB:.1f} GiB: add workers "
                "(cluster.workers), set training.gradient_checkpointing: true, lower data.cutoff_len or "
                "training.micro_batch_size, or offload (deepspeed.offload_params / offload_optimizer)"
            )

    def _check_packing(self) -> None:
        """Packed rows stay apart only through position ids: the model must take them. On GPU
        flash-attention 2 varlen runs them when installed, sdpa with transformers' block-diagonal
        mask (built from the position ids, as on CPU) otherwise (``packed_attention``)."""
        if self.cfg.data.packing != "packed":
            return
        if self.size is not None and not self.size.position_ids:
            raise UserError(
                f"data.packing: packed needs a model whose forward takes position_ids; "
                f"{self.cfg.model.name_or_path} does not: set data.packing: none"
            )

    def _params(self) -> str:
        if self.size is None:
            return "size unknown: config not reachable offline"
        return f"{self.size.total / 1e9:.2f}B params" if self.size.total > 1e9 else f"{self.size.total:,} params"

    def _deepspeed_estimate(self) -> str:
        """DeepSpeed's own ZeRO-3 estimate (full fine-tuning, so an upper bound for LoRA)."""
        import contextlib
        import io

        import torch

        from platypus_ray.core.devices import choose_deepspeed_accelerator

        choose_deepspeed_accelerator(torch.cuda.is_available())  # the driver: a CPU head of a GPU cluster too
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        if self.size is None:  # only called once memory_per_worker() has an estimate, which needs the size
            raise ValueError("the DeepSpeed estimate needs the model size")
        workers = self.cfg.cluster.workers
        per_node = min(self.cfg.cluster.gpus_per_node, workers) if self.cfg.cluster.use_gpu else workers
        nodes = -(-workers // per_node)
        with contextlib.redirect_stdout(io.StringIO()):
            _, device_bytes, _ = estimate_zero3_model_states_mem_needs(
                self.size.total,
                self.size.largest_layer,
                num_gpus_per_node=per_node,
                num_nodes=nodes,
                cpu_offload=self.cfg.deepspeed.offload_optimizer,
                cpu_offload_params=self.cfg.deepspeed.offload_params,
            )
        return f"{device_bytes / GIB:.1f} GiB per device"


def packed_attention(on_gpu: bool) -> str | None:
    """The attention implementation a packed run asks for: flash-attention 2 varlen on a GPU that
    has it installed; otherwise None (transformers' default, sdpa, whose mask it builds
    block-diagonal from the restarting position ids on any device)."""
    return "flash_attention_2" if on_gpu and importlib.util.find_spec("flash_attn") is not None else None


def _packed_gpu_attention() -> str:
    # planned on the driver: the GPU nodes' image is expected to match it (cluster.yaml installs the gpu extra)
    if packed_attention(True):
        return "; flash-attention 2 varlen"
    return "; sdpa with a block-diagonal mask from the position ids (flash-attn not installed here)"
