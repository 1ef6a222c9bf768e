"""The output guard of every stage that writes a folder (refine's own cases: tests/refine/test_bad_input.py).

No Ray: each stage is called through its real entry with ``init_ray`` replaced by a function that
fails the test, so a refusal that came after Ray started (or never) fails too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.core.errors import UserError
from platypus_ray.core.outputs import MARKER, remove_leftovers
from tests.helpers import train_raw

CASES = {  # case -> the refusal it must produce
    "dot": "is the working directory",
    "foreign": "was not written by platypus-ray",
    "input": "holds the input",
}


def _ray_must_not_start(*args, **kwargs):
    raise AssertionError("Ray started before the output was checked")


@pytest.fixture
def inputs(stage_inputs):
    return stage_inputs


def _target(root: Path, case: str, input_folder: str) -> str:
    return {"dot": ".", "foreign": str(root / "foreign"), "input": str(root / input_folder)}[case]


def _run_folder(root: Path, case: str) -> dict:
    """``run.storage_path`` and ``run.name`` whose run folder is the case's target."""
    target = Path(_target(root, case, "kept")).resolve()
    return {"storage_path": str(target.parent), "name": target.name}


def _merge(root: Path, case: str, monkeypatch) -> None:
    from platypus_ray import merge

    merge.run(
        merge.MergeConfig(base=str(root / "model"), adapter=str(root / "adapter"), out=_target(root, case, "adapter"))
    )


def _evaluate(root: Path, case: str, monkeypatch) -> None:
    from platypus_ray.evaluate import stage
    from platypus_ray.evaluate.config import EvaluateConfig

    monkeypatch.setattr(stage, "init_ray", _ray_must_not_start)
    stage.run(
        validate_config(
            EvaluateConfig,
            {
                "model": {"name_or_path": str(root / "model")},
                "output": _target(root, case, "model"),
                "benchmarks": [{"path": str(root / "bench.jsonl"), "format": "questions"}],
            },
        )
    )


def _train(root: Path, case: str, monkeypatch) -> None:
    from platypus_ray.train import stage
    from platypus_ray.train.config import TrainConfig

    monkeypatch.setattr(stage, "init_ray", _ray_must_not_start)
    raw = train_raw(str(root / "model"), str(root / "kept"), "unused", "unused", run=_run_folder(root, case))
    stage.prepare(validate_config(TrainConfig, raw))


def _pipeline(root: Path, case: str, monkeypatch) -> None:
    """The train run folder, which the pipeline used to check only after Ray and refine ran."""
    import platypus_ray.core.runtime
    from platypus_ray import pipeline

    monkeypatch.setattr(platypus_ray.core.runtime, "init_ray", _ray_must_not_start)
    raw = train_raw(str(root / "model"), str(root / "kept"), "unused", "unused", run=_run_folder(root, case))
    pipeline.run(validate_config(pipeline.PipelineConfig, {"train": raw}))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stage", [_merge, _evaluate, _train, _pipeline], ids=lambda f: f.__name__.strip("_"))
def test_every_stage_refuses_what_it_could_destroy_before_ray_starts(stage, case, inputs, monkeypatch):
    before = sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*"))
    with pytest.raises(UserError, match=CASES[case]):
        stage(inputs, case, monkeypatch)
    assert sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*")) == before


def test_a_marked_run_folder_is_resumed_and_checked_by_the_pipeline_before_ray(inputs, monkeypatch):
    """A folder this project wrote is accepted, but a rerun with another training problem is
    refused before Ray starts (check_resumable, as train's prepare does)."""
    import platypus_ray.core.runtime
    from platypus_ray import pipeline
    from platypus_ray.train.config import TrainConfig

    run_dir = inputs / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / MARKER).write_text("{}")
    raw = train_raw(str(inputs / "model"), str(inputs / "kept"), str(inputs / "runs"), "r1")
    earlier = validate_config(TrainConfig, {**raw, "lora": {**raw["lora"], "r": 4}})
    (run_dir / "config.yaml").write_text(json.dumps(earlier.model_dump(mode="json")))  # JSON is YAML
    monkeypatch.setattr(platypus_ray.core.runtime, "init_ray", _ray_must_not_start)
    with pytest.raises(UserError, match="run 'r1' .* was started with a different config .*lora"):
        pipeline.run(validate_config(pipeline.PipelineConfig, {"train": raw}))


def test_only_our_old_folders_of_interrupted_swaps_are_removed(tmp_path, capsys):
    ours, theirs = tmp_path / ".out.old-dead1234", tmp_path / ".out.old-notours"
    for folder in (ours, theirs):
        folder.mkdir()
        (folder / "x").write_text("1")
    (ours / MARKER).write_text("{}")
    remove_leftovers(tmp_path / "out")
    assert not ours.exists() and theirs.exists()
    assert f"removing {ours} (left by an interrupted run)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "source, output, refused",
    [
        ("*.jsonl", "out/refine", False),  # the audit's case: a glob in the working directory
        ("data/*.jsonl", "data/refined", False),  # a non-recursive glob never reads a subfolder's files
        ("data/*", "data/refined", False),  # a matched folder is not expanded
        ("data/*/*.parquet", "out/refine", False),
        ("data/*/*.json", "data/refined", True),  # would read data/refined/stats.json
        ("data/r*/*/*.parquet", "data/refined", True),  # would read data/refined/kept/part-0.parquet
        ("data/x*/*/*.parquet", "data/refined", False),
        ("data/**/*.jsonl", "data/refined", True),
        ("**/*.jsonl", "out/refine", True),
        ("data", "data/refined", True),  # a folder source is read recursively
        ("data/a.jsonl", "data/refined", False),
    ],
)
def test_a_source_glob_refuses_only_outputs_it_would_read_back(source, output, refused, tmp_path, monkeypatch):
    from platypus_ray.core.outputs import check_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    if refused:
        with pytest.raises(UserError, match=f"{output}' is inside the .*'{re.escape(source)}'"):
            check_output(output, "output", source_folders=[source])
    else:
        check_output(output, "output", source_folders=[source])


def test_a_glob_source_in_the_working_directory_runs_with_the_default_output_and_cache(tmp_path, monkeypatch):
    from platypus_ray.refine import RefineConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    from platypus_ray.refine.stage import STAGE

    STAGE.check_before_ray(validate_config(RefineConfig, {"sources": [{"path": "*.jsonl"}]}))  # out/refine, cache


def test_the_pipeline_checks_a_run_folder_whose_data_refine_has_not_written_yet(inputs, monkeypatch):
    """In a pipeline, train's data is refine's output, which does not exist before Ray starts:
    the run-folder check must not re-validate it (a real `ray job submit` of the demo failed so)."""
    import platypus_ray.core.runtime
    from platypus_ray import pipeline

    class ReachedRay(Exception):
        pass

    def reached_ray(*args, **kwargs):
        raise ReachedRay

    (inputs / "data.jsonl").write_text(json.dumps({"instruction": "Name a colour.", "output": "Red."}) + "\n")
    raw = train_raw(str(inputs / "model"), str(inputs / "kept"), str(inputs / "runs"), "r1")
    monkeypatch.setattr(platypus_ray.core.runtime, "init_ray", reached_ray)
    cfg = validate_config(
        pipeline.PipelineConfig,
        {
            "refine": {"sources": [{"path": str(inputs / "data.jsonl")}], "output": str(inputs / "out" / "refine")},
            "train": raw,
        },
    )
    assert not Path(cfg.train.data.path).exists()
    with pytest.raises(ReachedRay):  # every check before Ray passed
        pipeline.run(cfg)
