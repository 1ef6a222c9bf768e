"""Sweep config rules, the search space and trial concurrency against a real 2-CPU Ray instance."""

from __future__ import annotations

import pytest

from platypus_ray.core.config import ConfigError, validate_config
from platypus_ray.core.errors import UserError
from platypus_ray.sweep.config import SweepConfig
from platypus_ray.sweep.space import data_variants, param_space, trial_config
from platypus_ray.sweep.stage import max_concurrent_trials
from tests.helpers import train_raw


def sweep_raw(tiny_model, kept_folder, tmp_path, **sweep):
    return {**train_raw(tiny_model, kept_folder, str(tmp_path), "s"), "sweep": sweep}


def test_a_trial_is_the_train_config_with_its_values_set(tiny_model, kept_folder, tmp_path):
    cfg = validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, space={"lora.alpha": [8, 32]}))
    trial = trial_config(
        cfg.train_raw(),
        {"lora.r": 4, "lora.target_modules": ["q_proj", "v_proj"], "training.learning_rate": 1e-3, "run.name": "t1"},
    )
    assert (trial.lora.r, trial.lora.modules, trial.training.learning_rate) == (4, ["q_proj", "v_proj"], 1e-3)
    assert (trial.run.name, trial.cluster.workers, trial.lora.alpha) == ("t1", 2, 16)
    assert type(trial).__name__ == "TrainConfig"


def test_every_bad_space_entry_is_reported_once_before_ray(tiny_model, kept_folder, tmp_path):
    space = {
        "lora.alhpa": [4],  # unknown key
        "lora.r": [4, 0],  # a bad value
        "training.learning_rate": {"loguniform": [0, 1e-3]},  # log of 0
        "lora.dropout": {"uniform": [0.0, 1.5]},  # upper bound out of range
        "data.cutoff_len": {"randint": [64, 128]},  # data keys need lists
        "run.name": ["a"],  # owned by the trial
        "lora": [{"r": 4}],  # a whole section
        "training.warmup_steps": "5",  # neither list nor distribution
    }
    with pytest.raises(ConfigError) as err:
        validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, space=space))
    message = str(err.value)
    assert "sweep.space.lora.alhpa: not a train config key (did you mean 'lora.alpha'?)" in message
    assert "sweep.space.lora.r = 0: lora.r: Input should be greater than or equal to 1" in message
    assert "sweep.space.training.learning_rate: loguniform needs low > 0" in message
    assert "sweep.space.lora.dropout = 1.5: lora.dropout: Input should be less than 1" in message
    assert "sweep.space.data.cutoff_len: a key that changes the tokenised data takes a list" in message
    assert "sweep.space.run.name: each trial sets its own run and tracking keys" in message
    assert "sweep.space.lora: a whole section" in message
    assert "sweep.space.training.warmup_steps: give a list of values or one of" in message


def test_combinations_are_checked_and_old_keys_are_gone(tiny_model, kept_folder, tmp_path):
    # Each value is fine alone (micro 1 x 2 workers is the base); 4 workers x micro 4 does not divide global batch 8.
    raw = sweep_raw(
        tiny_model, kept_folder, tmp_path, space={"cluster.workers": [1, 4], "training.micro_batch_size": [1, 4]}
    )
    raw["training"]["micro_batch_size"] = 1
    with pytest.raises(ConfigError, match=r"sweep.space point .*cluster.workers.: 4.*: 4\}: .*must be a multiple of"):
        validate_config(SweepConfig, raw)
    with pytest.raises(ConfigError, match=r"sweep.lora_r: unknown key"):
        validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, lora_r=[4]))
    raw = sweep_raw(tiny_model, kept_folder, tmp_path)
    raw["data"]["val_size"] = 0
    with pytest.raises(ConfigError, match="eval_loss needs held-out rows: set data.val_size > 0"):
        validate_config(SweepConfig, raw)
    with pytest.raises(ConfigError, match=r"grace_period \(5\) must be <= max_t \(3\)"):
        validate_config(
            SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, scheduler={"grace_period": 5, "max_t": 3})
        )


def test_search_space_grid_random_and_data_variants(tiny_model, kept_folder, tmp_path):
    from ray import tune

    grid = validate_config(
        SweepConfig,
        sweep_raw(
            tiny_model,
            kept_folder,
            tmp_path,
            space={
                "lora.r": [4, 8],
                "lora.target_modules": ["mlp", ["q_proj"]],
                "training.learning_rate": {"loguniform": [1e-4, 1e-2]},
                "data.cutoff_len": [64, 128],
            },
        ),
    )
    space = param_space(grid)
    assert space["lora.r"] == {"grid_search": [4, 8]} and space["lora.target_modules"] == {
        "grid_search": ["mlp", ["q_proj"]]
    }
    assert isinstance(space["training.learning_rate"], tune.search.sample.Float)
    assert data_variants(grid) == [{"data.cutoff_len": 64}, {"data.cutoff_len": 128}]
    random = validate_config(
        SweepConfig,
        sweep_raw(
            tiny_model,
            kept_folder,
            tmp_path,
            search="random",
            num_samples=5,
            space={"training.learning_rate": [1e-4, 3e-4]},
        ),
    )
    assert param_space(random)["training.learning_rate"].categories == [1e-4, 3e-4]
    assert data_variants(random) == [{}]


def test_auto_concurrency_is_capacity_over_demand(ray_session, tiny_model, kept_folder, tmp_path):
    two = validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path))
    assert max_concurrent_trials(two) == 1  # 2 CPUs / (2 workers x 1 CPU)
    raw = sweep_raw(tiny_model, kept_folder, tmp_path)
    raw["cluster"]["workers"] = 1
    assert max_concurrent_trials(validate_config(SweepConfig, raw)) == 2
    raw["cluster"]["resources_per_worker"] = {"CPU": 2}
    raw["cluster"]["workers"] = 2
    with pytest.raises(
        UserError, match=r"2 workers x \{'CPU': 2.0\} do not fit this Ray instance \(CPU: needs 4, has 2\)"
    ):
        max_concurrent_trials(validate_config(SweepConfig, raw))


def test_each_data_variant_gets_its_own_steps_asha_check_and_a_sized_plan(
    ray_session, tiny_model, kept_folder, tmp_path, monkeypatch, caplog
):
    """Packed rows in 32- or 128-token sequences give different step counts: each variant's count is
    reported (not the last one's for all), ASHA's max_t is checked per variant, and every plan knows
    the model's size, so its memory check runs."""
    import logging

    from platypus_ray.sweep import stage
    from platypus_ray.train.plan import TrainPlan

    raw = sweep_raw(
        tiny_model,
        kept_folder,
        tmp_path,
        space={"data.cutoff_len": [32, 128]},
        scheduler={"type": "asha", "max_t": 1, "grace_period": 1},
    )
    raw["data"]["packing"] = "packed"
    raw["training"].update({"max_steps": None, "epochs": 1, "eval_every": 1})
    cfg = validate_config(SweepConfig, raw)
    sizes = []
    monkeypatch.setattr(TrainPlan, "check", lambda plan: sizes.append(plan.size))
    with caplog.at_level(logging.INFO, logger="platypus_ray.sweep"):
        data = stage._prepare_variants(cfg, cfg.train_raw())
    assert len(data) == 2 and len(sizes) == 2 and all(size is not None for size in sizes)
    steps = [r.getMessage() for r in caplog.records if "per trial" in r.getMessage()]
    assert len(steps) == 2 and "data.cutoff_len=32" in steps[0] and "data.cutoff_len=128" in steps[1], steps
    assert steps[0].split()[1] != steps[1].split()[1], steps  # the counts differ
    import re

    rounds = {
        re.search(r"\((data\S+)\)", m).group(1): int(re.search(r"\((\d+) evaluation rounds", m).group(1)) for m in steps
    }
    notes = [r.getMessage() for r in caplog.records if "scheduler.max_t" in r.getMessage()]
    noted = {re.search(r"\((data\S+)\)", m).group(1): int(re.search(r"< (\d+) rounds", m).group(1)) for m in notes}
    assert noted == {variant: n for variant, n in rounds.items() if n > 1}, (steps, notes)  # max_t is 1
