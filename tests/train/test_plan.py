"""The launch plan for a real 70B shape, computed on the meta device (nothing allocated)."""

from __future__ import annotations

import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.core.errors import UserError
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.plan import TrainPlan, model_size


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory):
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("llama-2-70b")
    LlamaConfig(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        tie_word_embeddings=False,
    ).save_pretrained(folder)
    return folder


def plan_for(folder, tmp_path, workers, checkpointing, packing="none"):
    (tmp_path / "kept").mkdir(exist_ok=True)
    cfg = validate_config(
        TrainConfig,
        {
            "model": {"name_or_path": str(folder)},
            "data": {"path": str(tmp_path / "kept"), "cutoff_len": 4096, "packing": packing},
            "training": {"global_batch_size": 16, "micro_batch_size": 1, "gradient_checkpointing": checkpointing},
            "cluster": {"workers": workers, "use_gpu": True, "resources_per_worker": {"GPU": 1, "CPU": 8}},
        },
    )
    return TrainPlan(cfg, model_size(cfg), train_rows=24_000, validation_rows=500, train_tokens=10**7, dropped_rows=0)


def test_70b_counts_and_a_16_gpu_shape_that_fits(llama70b, tmp_path):
    plan = plan_for(llama70b, tmp_path, workers=16, checkpointing=True)
    assert plan.size.total == 68_976_648_192
    assert plan.size.lora == 80 * 16 * 3 * (8192 + 28672)  # r=16 on gate/up/down
    assert plan.total_steps == 24_000 // 16  # 1 epoch at global batch 16
    plan.check()
    text = plan.render()
    assert "68.98B params" in text and "global 16 = micro 1 x 16 workers x 1 accumulation" in text
    assert "GiB per worker" in text and "DeepSpeed full fine-tune estimate" in text
    assert 10 < plan.memory_per_worker() / 2**30 < 40


def test_a_shape_that_cannot_fit_is_refused_with_the_fix(llama70b, tmp_path):
    plan = plan_for(llama70b, tmp_path, workers=2, checkpointing=False)
    with pytest.raises(UserError, match=r"GiB per worker does not fit in 80.0 GiB: add workers"):
        plan.check()


def test_too_few_rows_for_one_step_is_refused(llama70b, tmp_path):
    plan = plan_for(llama70b, tmp_path, workers=16, checkpointing=True)
    plan.train_rows = 10
    with pytest.raises(UserError, match="give no optimizer step"):
        plan.check()


def test_a_packed_gpu_run_without_flash_attn_plans_sdpa_with_the_block_diagonal_mask(llama70b, tmp_path, monkeypatch):
    """No refusal: sdpa gets transformers' mask from the restarting position ids, as on CPU
    (tests/train/test_packing.py holds its per-row losses to the unpacked ones)."""
    import importlib.util

    from platypus_ray.train.plan import packed_attention

    real = importlib.util.find_spec

    def without_flash(name, *args):
        return None if name == "flash_attn" else real(name, *args)

    def with_flash(name, *args):
        return object() if name == "flash_attn" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_flash)
    plan = plan_for(llama70b, tmp_path, workers=16, checkpointing=True, packing="packed")
    plan.check()
    assert "sdpa with a block-diagonal mask from the position ids (flash-attn not installed here)" in plan.render()
    assert packed_attention(True) is None and packed_attention(False) is None
    monkeypatch.setattr(importlib.util, "find_spec", with_flash)
    assert packed_attention(True) == "flash_attention_2" and packed_attention(False) is None
    assert "; flash-attention 2 varlen" in plan.render()
