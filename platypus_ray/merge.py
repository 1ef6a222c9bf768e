"""``platypus-ray merge``: fold a LoRA adapter into a base model and save a standalone model.

The base may be the model the adapter was trained on or another fine-tune of the same
base (Platypus2-70B-instruct merged the Platypus adapter into an instruct fine-tune).
The merge is checked: the saved model's logits must equal the base-plus-adapter logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from platypus_ray.core.config import StrictModel
from platypus_ray.core.stage import Input, Output, Stage


class MergeConfig(StrictModel):
    """Root config of ``platypus-ray merge`` (also given as --base/--adapter/--out flags)."""

    base: str = Field(
        description="the base model (hub id or folder): the one the adapter was trained on, or another fine-tune "
        "of the same base"
    )
    adapter: str = Field(description="the LoRA adapter folder (train writes <run folder>/adapter)")
    out: str = Field("out/merged", description="the folder the merged model and tokenizer are written to (replaced)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the dtype the base is loaded and saved in; auto: the base's saved dtype"
    )


@dataclass
class MergeResult:
    out: Path
    max_logit_difference: float

    def summary(self) -> str:
        return (
            f"merge: saved {self.out} (model + tokenizer); max |logits(merged) - logits(base+adapter)| "
            f"= {self.max_logit_difference:.2e}"
        )


def memory_needed(cfg: MergeConfig) -> int:
    """Bytes of RAM a merge holds: the base weights in their load dtype, plus headroom for the
    adapter, the check's activations and the save buffers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(cfg.base)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else (getattr(config, "dtype", None) or torch.float32)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return int(params * dtype.itemsize * 1.5) + 2**30


class MergeStage(Stage[MergeConfig, None, MergeResult]):
    """A base model and a LoRA adapter in; a standalone model folder (``out``) out."""

    name = "merge"
    config = MergeConfig

    def inputs(self, cfg: MergeConfig) -> list[Input]:
        return [Input("base", cfg.base, "model"), Input("adapter", cfg.adapter, "adapter")]

    def outputs(self, cfg: MergeConfig) -> list[Output]:
        return [Output("out", cfg.out)]

    def execute(self, cfg: MergeConfig, checked: None) -> MergeResult:
        return _merge(cfg)


STAGE = MergeStage()


def run(cfg: MergeConfig) -> MergeResult:
    """Preflight and merge: a plain function, so the pipeline can run it as a Ray task."""
    return STAGE.run(cfg)


def _merge(cfg: MergeConfig) -> MergeResult:
    import torch

    from platypus_ray.core.models import load_model
    from platypus_ray.core.outputs import replaced_atomically

    dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)  # auto: the base's saved dtype
    tokenizer, model = load_model(cfg.base, cfg.adapter, dtype, merge=False)  # merged below, after the probe
    probe = tokenizer("### Instruction:\nSay hello.\n\n### Response:\n", return_tensors="pt")
    with torch.no_grad():
        expected = model(**probe).logits
        merged = model.merge_and_unload()
        actual = merged(**probe).logits
    difference = float((expected - actual).abs().max())
    with replaced_atomically(cfg.out, "merge") as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return MergeResult(Path(cfg.out), difference)
