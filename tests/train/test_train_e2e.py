"""Real Ray Train V2, real DeepSpeed ZeRO-3, real PEFT on 2 CPU workers with the tiny LLaMA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from platypus_ray.core.errors import UserError
from platypus_ray.train import run
from platypus_ray.train.adapter import check_adapter
from platypus_ray.train.stage import fit, prepare
from tests.helpers import train_raw

pytestmark = pytest.mark.slow


# Warmup then constant: the schedule does not depend on max_steps, so a run stopped at step 6
# and resumed to 12 must land exactly where an uninterrupted 12-step run does.
SCHEDULE = {"scheduler": "constant_with_warmup", "warmup_steps": 2}


# These runs train on packed sequences (the sweep tests cover unpacked rows): ZeRO-3 on 2 workers,
# resume after a fault and the adapter checks all hold with several rows per sequence.
def packed_config(model, data, storage, name, **sections):
    from platypus_ray.core.config import validate_config
    from platypus_ray.train.config import TrainConfig

    raw = train_raw(model, data, storage, name, **sections)
    raw["data"]["packing"] = "packed"
    return validate_config(TrainConfig, raw)


@pytest.fixture(scope="module")
def trained(ray_session, tiny_model, kept_folder, tmp_path_factory):
    """The uninterrupted 12-step run, its storage, and its tokenised rows (which the follow-up
    runs below reuse where fresh tokenisation is not what they check)."""
    storage = str(tmp_path_factory.mktemp("train"))
    tracking = {"mlflow": f"sqlite:///{storage}/tracked.db", "tensorboard": True}  # MLflow 3's default store kind
    job = prepare(packed_config(tiny_model, kept_folder, storage, "zero3", training=SCHEDULE, tracking=tracking))
    return fit(job), storage, job.data


def test_base_model_is_partitioned_across_the_two_workers(trained):
    result, _, _ = trained
    m = result.metrics
    assert m["world_size"] == 2
    assert m["zero3_partitioned_params"] == m["zero3_params"] > 0  # every tensor sharded at load
    assert 0.45 <= m["zero3_local_fraction"] <= 0.55  # each rank holds about half


def test_packed_sequences_are_fewer_and_full(trained):
    plan = trained[0].plan
    assert plan.train_sequences < 0.6 * plan.train_rows  # about two rows per 128-token sequence
    assert plan.packing_efficiency > 0.85
    assert plan.steps_per_epoch == plan.train_sequences // 2 // 4 // 1  # workers, micro batch, accumulation


def test_loss_goes_down_and_metrics_are_recorded(trained):
    result, _, _ = trained
    losses = [h["loss"] for h in result.history if "loss" in h]
    evals = [h["eval_loss"] for h in result.history if "eval_loss" in h]
    assert len(losses) == 12 and len(evals) == 2
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert evals[-1] < evals[0]
    assert result.metrics["step"] == 12
    lines = [json.loads(x) for x in Path(result.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_s" in x and x["tokens_per_s"] > 0 for x in lines)


def test_one_mlflow_run_and_tensorboard_events_per_job(trained):
    import mlflow
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, storage, _ = trained
    uri = f"sqlite:///{storage}/tracked.db"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["zero3"])
    assert len(runs) == 1  # two workers, one run: only rank 0 logs
    run = runs.iloc[0]
    assert run["run_id"] == result.mlflow_run_id and run["status"] == "FINISHED"
    assert (run["params.lora.r"], run["params.lora.target_modules"], run["params.cluster.workers"]) == ("8", "mlp", "2")
    assert run["params.plan.total_steps"] == "12" and run["params.plan.train_rows"] == str(result.metrics["train_rows"])
    assert run["tags.adapter_path"] == result.adapter_path
    client = MlflowClient(uri)
    losses = client.get_metric_history(result.mlflow_run_id, "loss")
    assert [m.step for m in losses] == list(range(1, 13))
    assert [m.value for m in losses] == pytest.approx([h["loss"] for h in result.history if "loss" in h])
    for key in ("learning_rate", "grad_norm", "tokens_per_s", "eval_loss"):
        assert client.get_metric_history(result.mlflow_run_id, key), key
    events = EventAccumulator(str(Path(result.run_dir, "tensorboard")))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 13))
    assert "eval_loss" in events.Tags()["scalars"]


def test_adapter_has_real_weights_reloads_and_changes_logits(trained, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _, _ = trained
    shapes = check_adapter(result.adapter_path)
    assert all(0 not in shape for shape in shapes.values())
    assert {name.split(".")[-3] for name in shapes} == {"gate_proj", "up_proj", "down_proj"}
    tokenizer = AutoTokenizer.from_pretrained(result.adapter_path)
    inputs = tokenizer("### Instruction:\nWhat is the capital city of France?\n\n### Response:\n", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        before = base(**inputs).logits
        tuned = PeftModel.from_pretrained(base, result.adapter_path)
        after = tuned(**inputs).logits
    assert (after - before).abs().max() > 1e-3


def test_merge_folds_the_adapter_in(trained, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from platypus_ray.merge import MergeConfig
    from platypus_ray.merge import run as merge

    result, _, _ = trained
    merged = merge(MergeConfig(base=tiny_model, adapter=result.adapter_path, out=str(tmp_path / "merged")))
    assert merged.max_logit_difference < 1e-4
    model = AutoModelForCausalLM.from_pretrained(merged.out)
    assert not [n for n, _ in model.named_parameters() if "lora" in n]
    assert (merged.out / "tokenizer.json").is_file()


def test_restarted_run_resumes_model_optimizer_and_data_exactly(trained, tiny_model, kept_folder, monkeypatch):
    from safetensors.torch import load_file

    straight, storage, data = trained
    # The first 6 steps train on the straight run's tokenised rows; the extension below tokenises
    # afresh, as a rerun does: equal losses then also show the data preparation is deterministic.
    first = fit(
        prepare(
            packed_config(tiny_model, kept_folder, storage, "resumed", training={**SCHEDULE, "max_steps": 6}), data=data
        )
    )
    assert first.metrics["step"] == 6
    # Extended to 12 steps under the same name, and a worker crashes at step 9: FailureConfig
    # restarts the group from the step-6 checkpoint (not from step 1) and the run finishes.
    monkeypatch.setenv("PLATYPUS_RAY_INJECT_FAULT_AT_STEP", "9")
    resumed = run(
        packed_config(
            tiny_model, kept_folder, storage, "resumed", training={**SCHEDULE, "max_steps": 12}, run={"max_failures": 1}
        )
    )
    assert (Path(storage) / "resumed" / ".injected-fault").read_text() == "9\n"  # the fault did fire
    assert resumed.metrics["step"] == 12
    steps = [h["step"] for h in resumed.history if "loss" in h]
    assert steps == list(range(1, 13))
    # Identical losses and adapter weights: weights, Adam moments, LR schedule, RNG and the
    # data position all came back from the step-6 checkpoint.
    assert [h["loss"] for h in resumed.history if "loss" in h] == [h["loss"] for h in straight.history if "loss" in h]
    a = load_file(f"{resumed.adapter_path}/adapter_model.safetensors")
    b = load_file(f"{straight.adapter_path}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_of_a_finished_run_changes_nothing(trained, tiny_model, kept_folder):
    straight, storage, data = trained
    again = fit(prepare(packed_config(tiny_model, kept_folder, storage, "zero3", training=SCHEDULE), data=data))
    assert again.metrics["step"] == 12 and again.history == straight.history


def test_rerun_with_a_different_problem_is_refused(trained, tiny_model, kept_folder):
    _, storage, _ = trained
    config = Path(storage, "zero3", "config.yaml")
    recorded = config.read_text()
    with pytest.raises(UserError, match=r"different config \(lora: .*'r': 8.*'r': 4"):
        run(packed_config(tiny_model, kept_folder, storage, "zero3", training=SCHEDULE, lora={"r": 4}))
    assert config.read_text() == recorded  # the refused config did not replace the run's
