"""Train config validation and the generated DeepSpeed config (no Ray)."""

from __future__ import annotations

import re

import pytest

from platypus_ray.core.config import ConfigError, validate_config
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.deepspeed_config import deepspeed_config


@pytest.fixture
def base(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "kept"
    data.mkdir()
    return {"model": {"name_or_path": str(model)}, "data": {"path": str(data)}}


def test_named_target_sets_and_accumulation(base):
    cfg = validate_config(
        TrainConfig, {**base, "cluster": {"workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}}}
    )
    assert cfg.lora.modules == ["gate_proj", "up_proj", "down_proj"]
    assert cfg.gradient_accumulation_steps == 8  # 16 / (1 x 2)
    cfg = validate_config(TrainConfig, {**base, "lora": {"target_modules": ["q_proj"]}})
    assert cfg.lora.modules == ["q_proj"]


def test_batch_must_divide_and_gpu_settings_must_agree(base):
    with pytest.raises(ConfigError) as err:
        validate_config(TrainConfig, {**base, "training": {"global_batch_size": 10}, "cluster": {"workers": 4}})
    assert "global_batch_size (10) must be a multiple of training.micro_batch_size x cluster.workers (1 x 4)" in str(
        err.value
    )
    with pytest.raises(ConfigError, match="use_gpu is true but resources_per_worker has no GPU"):
        validate_config(TrainConfig, {**base, "cluster": {"resources_per_worker": {"CPU": 2}}})


def test_ray_resource_amounts_are_checked_before_ray_starts(base, tmp_path):
    from platypus_ray.evaluate.config import InferenceSettings

    def cluster(resources):
        return validate_config(TrainConfig, {**base, "cluster": {"use_gpu": False, "resources_per_worker": resources}})

    for resources, named in (
        ({"CPU": -1}, "CPU=-1"),
        ({"CPU": 1e300}, "CPU=1e+300"),
        ({"CPU": 1, "custom": 1e-5}, "custom=1e-05"),
    ):
        with pytest.raises(
            ConfigError,
            match=re.escape(
                f"cluster.resources_per_worker: {named}: each amount must be 0 or "
                "between 0.0001 (Ray's smallest step) and 1e+14"
            ),
        ):
            cluster(resources)
    with pytest.raises(ConfigError, match="cluster.resources_per_worker.CPU: Input should be a finite number"):
        cluster({"CPU": float("inf")})
    assert cluster({"CPU": 0.5, "GPU": 0, "memory": 64e9}).cluster.resources_per_worker["memory"] == 64e9
    for key, value in (("cpus_per_actor", 1e-5), ("cpus_per_actor", 1e300), ("actors", 10**6)):
        with pytest.raises(ConfigError, match=f"{key}: Input should be"):
            validate_config(InferenceSettings, {key: value})


def test_missing_model_and_data_paths_name_the_fix(tmp_path):
    """The schema takes any path (it validates the same on a worker); train's preflight names each
    missing input with its key and the fix, all in one error."""
    from platypus_ray.train.stage import STAGE

    raw = {"model": {"name_or_path": str(tmp_path / "nope")}, "data": {"path": str(tmp_path / "kept")}}
    cfg = validate_config(TrainConfig, raw)
    assert cfg.model.name_or_path == str(tmp_path / "nope")
    with pytest.raises(ConfigError) as err:
        STAGE.check_before_ray(cfg)
    message = str(err.value)
    assert "model.name_or_path" in message and "make-tiny-model" in message
    assert "data.path" in message and "platypus-ray refine" in message


def test_deepspeed_config_is_zero3_with_gathered_saves(base):
    cfg = validate_config(TrainConfig, base)
    ds = deepspeed_config(cfg.deepspeed, on_gpu=False)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and "optimizer" not in ds
    offload = validate_config(TrainConfig, {**base, "deepspeed": {"offload_optimizer": True, "offload_params": True}})
    ds = deepspeed_config(offload.deepspeed, on_gpu=True)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"  # offloaded state needs DeepSpeed's CPU Adam


def test_template_keys_and_a_missing_chat_template_file(base, tmp_path):
    from platypus_ray.train.stage import STAGE

    assert validate_config(TrainConfig, base).data.template == "auto"
    inline = validate_config(TrainConfig, {**base, "data": {**base["data"], "chat_template": "{{ bos_token }}"}})
    assert inline.data.chat_template_file is None
    with pytest.raises(ConfigError, match="data.chat_template is set but data.template is alpaca"):
        validate_config(TrainConfig, {**base, "data": {**base["data"], "template": "alpaca", "chat_template": "x"}})
    with pytest.raises(ConfigError, match="alpaca, chat or auto|'alpaca', 'chat' or 'auto'"):
        validate_config(TrainConfig, {**base, "data": {**base["data"], "template": "sharegpt"}})
    missing = str(tmp_path / "chat.jinja")
    cfg = validate_config(TrainConfig, {**base, "data": {**base["data"], "template": "chat", "chat_template": missing}})
    assert cfg.data.chat_template_file == missing
    with pytest.raises(ConfigError) as err:
        STAGE.check_before_ray(cfg)
    assert f"data.chat_template: '{missing}' does not exist" in str(err.value)
