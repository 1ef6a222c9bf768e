"""jobs/configs/demo-chat.yaml end to end on the session's Ray: conversations refined, trained
with the tiny LLaMA's chat template, merged and evaluated (the CI run of the chat recipe)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from platypus_ray.cli import main

pytestmark = pytest.mark.slow


def test_the_chat_pipeline_runs_every_stage_on_conversations(ray_session, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    overrides = {
        "build_tiny_model": "false",
        "refine.output": f"{out}/refine",
        "refine.embedding.actors": "1",
        "train.model.name_or_path": tiny_model,
        "train.run.storage_path": f"{out}/train",
        "train.training.max_steps": "4",
        "train.training.eval_every": "2",
        "merge.out": f"{out}/merged",
        "evaluate.output": f"{out}/eval",
        "evaluate.compare_with_base": "false",
    }
    args = ["pipeline", "--config", "jobs/configs/demo-chat.yaml"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    console = capsys.readouterr().out
    assert console.index("refine: ") < console.index("train: ") < console.index("merge: saved")
    assert "; chat template" in console  # the plan line: rows rendered with the tokenizer's own template

    stats = json.loads((out / "refine/stats.json").read_text())
    ledger = pq.read_table(out / "refine/ledger").to_pandas()
    assert len(ledger) == stats["input_rows"]  # every conversation accounted for
    invalid = ledger[ledger.status == "invalid"]
    assert sorted(invalid.reason) == ["no_assistant_turn", "tool_turn"] and invalid.detail.str.contains("turn").all()
    assert (ledger.reason == "contaminated").sum() >= 1 and (ledger.reason == "near_duplicate").sum() >= 1
    kept = pq.read_table(out / "refine/kept")
    assert "messages" in kept.column_names and kept.num_rows == (ledger.status == "kept").sum()

    result = json.loads((out / "train/tiny-chat/result.json").read_text())
    assert result["step"] == 4
    assert (out / "train/tiny-chat/adapter/adapter_model.safetensors").stat().st_size > 0
    assert (out / "merged/config.json").is_file() and list((out / "merged").glob("*.safetensors"))
    summary = json.loads((out / "eval/summary.json").read_text())
    assert summary["models"]["fine-tuned"]["benchmarks"]["sample-quiz"]["items"] == 12
