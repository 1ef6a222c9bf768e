"""What every Ray Train worker runs: the Hugging Face Trainer with DeepSpeed ZeRO-3 and PEFT LoRA.

Order matters under ZeRO-3: DeepSpeed's communicator must wrap Ray's process group, and
``TrainingArguments(deepspeed=...)`` must exist before ``from_pretrained`` so the base
model is partitioned while it loads (``zero.Init``): no worker ever holds all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Any, cast

import ray.train
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from transformers import PrinterCallback, Trainer, TrainingArguments

from platypus_ray.core import log
from platypus_ray.core.collate import attention_mask, padded_width, right_pad
from platypus_ray.core.devices import choose_deepspeed_accelerator, gpu_here, process_group_backend
from platypus_ray.core.dtypes import torch_dtype
from platypus_ray.train.callbacks import InjectedFault, ReportToRay, TrackingCallback
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.layout import CHECKPOINT_SUBDIR
from platypus_ray.train.plan import WorkerPlan, packed_attention
from platypus_ray.train.prompts import IGNORE_INDEX


def train_loop_per_worker(plan: WorkerPlan) -> None:
    """Ray Train entry: rebuild the typed config, train, report metrics and checkpoints to Ray."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    # DeepSpeed calls torch.distributed APIs torch has renamed; one warning per call floods the log.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    log.setup()  # this process's progress lines reach the driver's console
    cfg = TrainConfig.model_validate(plan.config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    on_gpu = gpu_here(cfg.cluster.use_gpu)  # a simulated GPU: the CPU path (devices.py)
    choose_deepspeed_accelerator(on_gpu)
    if not on_gpu:  # Ray Train points Accelerate at cuda:0 whenever it assigned a GPU, simulated ones too
        os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"

    import deepspeed

    deepspeed.init_distributed(dist_backend=process_group_backend(on_gpu))  # wraps Ray's process group
    args = _training_arguments(cfg, plan, on_gpu)  # registers the ZeRO-3 config for from_pretrained
    packed = cfg.data.packing == "packed"
    implementation = packed_attention(on_gpu) if packed else None
    attention = {"attn_implementation": implementation} if implementation else {}
    base = AutoModelForCausalLM.from_pretrained(
        cfg.model.name_or_path, dtype=torch_dtype(cfg.model.dtype, on_gpu), **attention
    )
    base.config.use_cache = False  # training; a KV cache would also turn off the packed-sequence mask
    partition = zero3_partition_report(base, world)
    partition.update(worker_placement())
    if cfg.training.gradient_checkpointing:
        base.enable_input_require_grads()
    set_seed(cfg.training.seed)  # every rank must start from the same LoRA initialisation
    model = get_peft_model(
        base,
        LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.modules,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )

    from platypus_ray.train.data import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    if plan.chat_template is not None:  # checkpoints and the adapter carry the template the rows were rendered with
        tokenizer.chat_template = plan.chat_template
    collate = PadCollate(tokenizer.pad_token_id)  # validation rows stay unpacked: eval_loss is comparable
    trainer = ShardTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_shard=ray.train.get_dataset_shard("train"),
        eval_shard=ray.train.get_dataset_shard("validation") if plan.has_validation else None,
        train_collate=PackedCollate(tokenizer.pad_token_id) if packed else collate,
        eval_collate=collate,
        micro_batch_size=cfg.training.micro_batch_size,
    )
    trainer.remove_callback(PrinterCallback)  # ReportToRay logs the progress lines on rank 0
    static = {"train_rows": plan.train_rows, "total_steps": plan.total_steps, **partition}  # a sweep ranks by them
    trainer.add_callback(ReportToRay(trainer, rank, plan.steps_per_epoch, static))
    if rank == 0 and plan.tracking.active:  # after ReportToRay: it adds tokens/s to each log
        trainer.add_callback(TrackingCallback(plan.tracking))
    if plan.inject_fault_at_step and rank == world - 1:
        trainer.add_callback(InjectedFault(plan.inject_fault_at_step, plan.fault_marker))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        trainer.train()
    else:
        with checkpoint.as_directory() as folder:
            resume = os.path.join(folder, CHECKPOINT_SUBDIR)
            # A finished run restarted under the same name has nothing left to do (the Trainer
            # would otherwise take one extra step past max_steps).
            if _global_step(resume) < plan.total_steps:
                trainer.train(resume_from_checkpoint=resume)
    torch.distributed.barrier()  # ranks sharing a node also share the scratch folder
    if context.get_local_rank() == 0 and args.output_dir is not None:  # always set, by _training_arguments
        shutil.rmtree(args.output_dir, ignore_errors=True)


def worker_placement() -> dict[str, Any]:
    """Which Ray node each rank runs on (rank order), and how many nodes the group spans."""
    nodes: list[str | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    gathered = cast("list[str]", nodes)  # all_gather_object filled every rank's slot with its node id
    return {"worker_nodes": ",".join(gathered), "nodes": len(set(gathered))}


def _global_step(hf_checkpoint: str) -> int:
    with open(os.path.join(hf_checkpoint, "trainer_state.json")) as handle:
        return int(json.load(handle)["global_step"])


def _training_arguments(cfg: TrainConfig, plan: WorkerPlan, on_gpu: bool) -> TrainingArguments:
    t = cfg.training
    evaluate = plan.has_validation
    return TrainingArguments(
        output_dir=plan.scratch_dir,
        deepspeed=plan.deepspeed,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_steps=plan.total_steps,  # the data is an endless stream of shard epochs
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_every,
        save_strategy="steps",
        save_steps=t.eval_every,
        save_total_limit=cfg.run.keep_checkpoints,
        gradient_checkpointing=t.gradient_checkpointing,
        bf16=str(torch_dtype(cfg.model.dtype, on_gpu)) == "torch.bfloat16",
        use_cpu=not on_gpu,
        ddp_backend=process_group_backend(on_gpu),
        seed=t.seed,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_level="warning",
    )


def zero3_partition_report(model: torch.nn.Module, world: int) -> dict[str, float]:
    """How much of the base model this rank holds right after loading (ZeRO-3: ~1/world)."""
    params = list(model.parameters())
    partitioned = [p for p in params if hasattr(p, "ds_numel") and p.numel() == 0]
    full = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    return {
        "zero3_params": len(params),
        "zero3_partitioned_params": len(partitioned),
        "zero3_local_fraction": local / full if full else 1.0,
        "world_size": world,
    }


class PadCollate(NumpyBatchCollateFn):
    """Right-pad a Ray Data batch of token lists to the longest row (a multiple of 8, as Platypus)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(  # type: ignore[override]  # Ray's CollateFn returns CollatedData, an unbound TypeVar
        self, batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        ids, labels = list(batch["input_ids"]), list(batch["labels"])
        lengths = [len(row) for row in ids]
        width = padded_width(lengths, 8)
        return {
            "input_ids": right_pad(ids, self.pad_token_id, width),
            "labels": right_pad(labels, IGNORE_INDEX, width),
            "attention_mask": attention_mask(lengths, width),
        }


class PackedCollate(PadCollate):
    """Packed sequences, right-padded to a multiple of 8. Position ids restart at every row (the
    pad tail is one more segment, all -100) and there is no attention mask: transformers then
    confines attention to each row (block-diagonal causal mask; flash-attention 2 varlen on GPU)."""

    def __call__(  # type: ignore[override]  # as PadCollate.__call__: Ray's return type is an unbound TypeVar
        self, batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        ids, labels = list(batch["input_ids"]), list(batch["labels"])
        lengths = [len(row) for row in ids]
        width = padded_width(lengths, 8)
        positions = [[*pos, *range(width - n)] for pos, n in zip(batch["position_ids"], lengths)]
        return {
            "input_ids": right_pad(ids, self.pad_token_id, width),
            "labels": right_pad(labels, IGNORE_INDEX, width),
            "position_ids": right_pad(positions, 0, width),
            "real_tokens": torch.tensor(sum(lengths)),
        }


class _ShardStream(torch.utils.data.IterableDataset):
    """Batches from this worker's Ray Data shard; ``endless`` repeats epochs so gradient
    accumulation never sees a partial group and a resume fast-forwards to the exact batch."""

    def __init__(self, shard, batch_size: int, collate: PadCollate, endless: bool):
        self.shard, self.batch_size, self.collate, self.endless = shard, batch_size, collate, endless

    def __iter__(self):
        while True:
            # drop_last keeps the number of forward passes equal on every rank (ZeRO-3 needs it).
            yield from self.shard.iter_torch_batches(  # "auto" is cuda:0 for a simulated GPU too (devices.py)
                batch_size=self.batch_size,
                collate_fn=self.collate,
                drop_last=self.endless,
                device="auto" if torch.cuda.is_available() else "cpu",
            )
            if not self.endless:
                return


class ShardTrainer(Trainer):
    """A Trainer fed by Ray Data shards (already split per worker: accelerate must not re-shard)."""

    def __init__(self, *, train_shard, eval_shard, train_collate, eval_collate, micro_batch_size, **kwargs):
        self._train = _ShardStream(train_shard, micro_batch_size, train_collate, endless=True)
        self._eval = (
            None if eval_shard is None else _ShardStream(eval_shard, micro_batch_size, eval_collate, endless=False)
        )
        super().__init__(train_dataset=self._train, eval_dataset=self._eval, **kwargs)
        self.tokens_seen = 0

    def get_train_dataloader(self):
        return torch.utils.data.DataLoader(self._train, batch_size=None)

    def get_eval_dataloader(self, eval_dataset=None):
        return torch.utils.data.DataLoader(self._eval, batch_size=None)

    def training_step(self, model, inputs, num_items_in_batch=None):
        real = inputs.pop("real_tokens", None)  # packed batches carry their non-pad token count
        self.tokens_seen += int(real if real is not None else inputs["attention_mask"].sum())
        return super().training_step(model, inputs, num_items_in_batch)
