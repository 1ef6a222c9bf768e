"""The stage contract (core/stage.py): configs are pure data, every command is a Stage with one
preflight, and the pipeline's preflight is the union of its sections' checks, run before Ray."""

from __future__ import annotations

import builtins
import os

import pytest

from platypus_ray.cli import COMMANDS
from platypus_ray.core.config import ConfigError, load_config, validate_config
from platypus_ray.core.errors import UserError
from platypus_ray.core.stage import Input, Stage, input_problem, is_planned
from platypus_ray.pipeline import STAGE as PIPELINE
from platypus_ray.pipeline import PipelineConfig
from tests.helpers import shipped_presets, train_raw


def test_every_command_is_a_stage_of_its_own_config_class():
    for name, command in COMMANDS.items():
        stage = command.load_stage()
        assert isinstance(stage, Stage), name
        assert stage.config is command.config_class(), name


def test_validating_a_config_never_touches_the_disk(monkeypatch, stage_inputs):
    """Every shipped preset, and a pipeline naming paths that do not exist, validate with the
    filesystem calls a path check would make patched to fail."""
    presets = [(type(cfg), cfg.model_dump()) for cfg in shipped_presets().values()]
    missing = {
        "refine": {"sources": [{"path": "nowhere/*.jsonl"}], "output": "out/r"},
        "train": train_raw("no-such-model-folder/", "nowhere.jsonl", "out/runs", "t"),
        "merge": {"out": "out/m"},
        "evaluate": {"benchmarks": [{"path": "nowhere.jsonl", "format": "questions"}], "output": "out/e"},
    }

    touched: list[str] = []

    def recording(original):
        def call(*args, **kwargs):
            touched.append(str(args[0]) if args else "?")
            return original(*args, **kwargs)

        return call

    with monkeypatch.context() as patch:
        for module, names in ((os, ("stat", "listdir", "scandir", "lstat")), (os.path, ("exists", "isfile", "isdir"))):
            for attr in names:
                patch.setattr(module, attr, recording(getattr(module, attr)))
        patch.setattr(builtins, "open", recording(builtins.open))
        for config_class, raw in presets:
            validate_config(config_class, raw)
        validate_config(PipelineConfig, missing)
    assert touched == []


@pytest.fixture
def ray_starts(monkeypatch) -> list[str]:
    """Every call that would start or join Ray (each stage module's init_ray), recorded instead."""
    import importlib

    starts: list[str] = []
    for name in ("core.runtime", "refine.stage", "train.stage", "evaluate.stage", "sweep.stage"):
        module = importlib.import_module(f"platypus_ray.{name}")
        monkeypatch.setattr(module, "init_ray", lambda *a, _name=name, **k: starts.append(_name))
    return starts


def test_missing_inputs_are_listed_together_with_their_keys_before_ray(stage_inputs, ray_starts):
    cfg = validate_config(
        PipelineConfig,
        {
            "refine": {
                "sources": [{"path": "nowhere/*.jsonl"}],
                "benchmarks": [{"path": "no-bench.jsonl", "format": "questions"}],
            },
            "train": train_raw("model", "ignored", "runs", "t"),
        },
    )
    with pytest.raises(ConfigError) as raised:
        PIPELINE.preflight(cfg)
    message = str(raised.value)
    assert "refine: inputs not found" in message
    assert "refine.sources[0].path" in message and "refine.benchmarks[0].path" in message, message
    assert ray_starts == [], "Ray started before the checks that need no cluster"


def pipeline_raw(**override) -> dict:
    raw = {
        "refine": {"sources": [{"path": "data.jsonl"}], "output": "out/refined"},
        "train": train_raw("model", "ignored", "runs", "t"),
        "merge": {"out": "out/merged"},
        "evaluate": {"benchmarks": [{"path": "bench.jsonl", "format": "questions"}], "output": "out/eval"},
    }
    for section, values in override.items():
        raw[section] = {**raw[section], **values}
    return raw


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"evaluate": {"output": "out/merged"}}, "evaluate.output"),  # the merged model it reads
        ({"evaluate": {"output": "model"}}, "evaluate.output"),  # train's base model
        ({"merge": {"out": "foreign"}}, "merge.out"),  # a folder the project did not write
        ({"refine": {"output": "foreign"}}, "refine.output"),
        ({"evaluate": {"output": "bench.jsonl"}}, "evaluate.output"),
        ({"train": {"model": {"name_or_path": "./absent"}}}, "train.model.name_or_path"),
        ({"evaluate": {"benchmarks": [{"path": "gone.jsonl", "format": "questions"}]}}, "evaluate.benchmarks[0].path"),
    ],
)
def test_every_section_is_checked_before_any_work(stage_inputs, monkeypatch, ray_starts, override, key):
    """A bad key in any section stops the pipeline before refine runs a single task or Ray starts."""
    from platypus_ray import pipeline

    ran = []
    monkeypatch.setattr(pipeline, "_pipeline", lambda *a: ran.append(a))
    cfg = validate_config(PipelineConfig, pipeline_raw(**override))
    with pytest.raises(UserError) as raised:
        PIPELINE.run(cfg)
    assert key in str(raised.value), str(raised.value)
    assert not ran and ray_starts == []


def test_an_input_a_section_before_writes_is_planned_not_missing(stage_inputs):
    """train reads refine's output/kept, merge reads train's adapter, evaluate the merged model: none
    exist before the run, and none is an error."""
    cfg = validate_config(PipelineConfig, pipeline_raw())
    assert [name for name, _, _ in PIPELINE.sections(cfg)] == ["refine", "train", "merge", "evaluate"]
    planned: set[str] = set()
    for name, stage, section in PIPELINE.sections(cfg):
        if name == "evaluate":
            continue  # loads lm-eval tasks; covered by the evaluate tests
        stage.check_before_ray(section, planned, prefix=f"{name}.")
        planned.update(out.path for out in stage.outputs(section))


def test_is_planned_covers_paths_under_a_planned_folder(tmp_path):
    assert is_planned(str(tmp_path / "out/kept"), [str(tmp_path / "out")])
    assert is_planned("out/refined/kept", ["out/refined"])
    assert not is_planned("out/refined-2", ["out/refined"])
    assert is_planned("s3://b/run/adapter", ["s3://b/run"])
    assert not is_planned("s3://b/runs", ["s3://b/run"])


def test_input_kinds_report_what_is_wrong(stage_inputs):
    assert input_problem(Input("m", "model", "model")) is None
    assert input_problem(Input("m", "org/hub-model", "model")) is None  # a hub id: checked when loaded
    assert "not a model folder" in input_problem(Input("m", "foreign", "model"))
    assert input_problem(Input("a", "adapter", "adapter")) is None
    assert "not a LoRA adapter folder" in input_problem(Input("a", "model", "adapter"))
    assert input_problem(Input("d", "data.jsonl", "data", (".jsonl",))) is None
    assert input_problem(Input("d", "gone.jsonl", "data", (".jsonl",), hint="run refine first")).endswith(
        "run refine first"
    )
    assert input_problem(Input("d", "s3://bucket/x.jsonl", "data")) is None  # remote: checked when read


def test_a_section_may_be_a_model_name_a_yaml_file_or_inline(tmp_path):
    """``model: out/merged`` is the model (lm-eval, axolotl); a .yaml string is a file holding the
    section; any other string for a section without a shorthand is refused with how to write it."""
    from platypus_ray.evaluate.config import EvaluateConfig

    bench = [{"path": "b.jsonl", "format": "questions"}]
    cfg = validate_config(EvaluateConfig, {"model": "out/merged", "benchmarks": bench})
    assert cfg.model.name_or_path == "out/merged" and cfg.model.adapter is None
    (tmp_path / "lora.yaml").write_text("r: 4\nalpha: 8\n")
    config = tmp_path / "train.yaml"
    config.write_text("model: out/tiny\ndata: {path: d.jsonl}\nlora: lora.yaml\n")
    from platypus_ray.train.config import TrainConfig

    train = load_config(TrainConfig, config)
    assert train.model.name_or_path == "out/tiny" and train.lora.r == 4
    config.write_text("model: out/tiny\ndata: {path: d.jsonl}\nlora: rank-four\n")
    with pytest.raises(ConfigError, match=r"lora.*expects a section"):
        load_config(TrainConfig, config)
    config.write_text("model: out/tiny\ndata: {path: d.jsonl}\nlora: absent.yaml\n")
    with pytest.raises(ConfigError, match=r"absent\.yaml.*does not exist"):
        load_config(TrainConfig, config)


def test_merge_run_is_a_plain_function_ray_can_run_as_a_task():
    """The pipeline merges in a Ray task (pipeline.merge_on_cluster): @ray.remote refuses a bound method."""
    import inspect

    import ray

    from platypus_ray import merge

    assert inspect.isfunction(merge.run)
    ray.remote(merge.run)  # raises TypeError for anything but a function or a class
