"""The model- and adapter-folder checks (plain functions the config validators and preflights share)."""

from __future__ import annotations

from platypus_ray.core.models import adapter_problem, model_problem, tokenizer_source


def test_model_and_adapter_folder_checks_say_what_is_missing(tmp_path):
    assert model_problem("org/some-model") is None  # a hub id: checked when loaded
    assert "is not a model folder (no config.json)" in model_problem(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert model_problem(str(tmp_path)) is None
    assert adapter_problem(str(tmp_path)) == f"'{tmp_path}' is not a LoRA adapter folder (no adapter_config.json)"
    (tmp_path / "adapter_config.json").write_text("{}")
    assert adapter_problem(str(tmp_path)) is None
    assert tokenizer_source("base", str(tmp_path)) == "base"
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert tokenizer_source("base", str(tmp_path)) == str(tmp_path)
