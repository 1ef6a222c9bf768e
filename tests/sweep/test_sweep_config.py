"""Sweep config rules and trial concurrency against a real 2-CPU Ray instance."""

from __future__ import annotations

import pytest

from platypus_ray.config import ConfigError, validate_config
from platypus_ray.errors import UserError
from platypus_ray.sweep.config import SweepConfig
from platypus_ray.sweep.stage import max_concurrent_trials
from tests.helpers import train_raw


def sweep_raw(tiny_model, kept_folder, tmp_path, **sweep):
    return {**train_raw(tiny_model, kept_folder, str(tmp_path), "s"), "sweep": sweep}


def test_trial_config_carries_the_trial_parameters(tiny_model, kept_folder, tmp_path):
    cfg = validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, gpus_per_trial=2))
    trial = cfg.train_config(4, ["q_proj", "v_proj"], 1e-3, "t1", "/runs")
    assert (trial.lora.r, trial.lora.modules, trial.training.learning_rate) == (4, ["q_proj", "v_proj"], 1e-3)
    assert (trial.run.name, trial.run.storage_path, trial.cluster.workers) == ("t1", "/runs", 2)
    assert not hasattr(trial, "sweep")


def test_invalid_sweeps_fail_with_the_key(tiny_model, kept_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"micro_batch_size x sweep.gpus_per_trial \(4 x 4\)"):
        validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, gpus_per_trial=4))
    raw = sweep_raw(tiny_model, kept_folder, tmp_path)
    raw["data"]["val_size"] = 0
    with pytest.raises(ConfigError, match="eval_loss needs held-out rows: set data.val_size > 0"):
        validate_config(SweepConfig, raw)
    with pytest.raises(ConfigError, match=r"grace_period \(5\) must be <= max_t \(3\)"):
        validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, scheduler={"grace_period": 5, "max_t": 3}))


def test_auto_concurrency_is_capacity_over_demand(ray_session, tiny_model, kept_folder, tmp_path):
    two = validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, gpus_per_trial=2))
    assert max_concurrent_trials(two) == 1  # 2 CPUs / (2 workers x 1 CPU)
    raw = sweep_raw(tiny_model, kept_folder, tmp_path, gpus_per_trial=1)
    raw["training"]["global_batch_size"] = 4
    assert max_concurrent_trials(validate_config(SweepConfig, raw)) == 2
    raw["cluster"]["resources_per_worker"] = {"CPU": 2}
    raw["sweep"]["gpus_per_trial"] = 2
    raw["training"]["global_batch_size"] = 8
    with pytest.raises(UserError, match=r"not even one trial fits this Ray instance \(CPU: 4 per trial, cluster has 2\)"):
        max_concurrent_trials(validate_config(SweepConfig, raw))


def test_search_space_grid_and_random(tiny_model, kept_folder, tmp_path):
    from ray import tune

    from platypus_ray.sweep.stage import _param_space

    grid = validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, lora_r=[4, 8], target_modules=["mlp", ["q_proj"]]))
    space = _param_space(grid)
    assert space["lora_r"] == {"grid_search": [4, 8]} and space["target_modules"] == {"grid_search": ["mlp", ["q_proj"]]}
    assert "learning_rate" not in space  # the train config's rate is used
    random = validate_config(SweepConfig, sweep_raw(tiny_model, kept_folder, tmp_path, search="random", num_samples=5,
                                                     learning_rate=[1e-4, 3e-4]))
    space = _param_space(random)
    assert isinstance(space["lora_r"], tune.search.sample.Categorical)
    assert space["learning_rate"].categories == [1e-4, 3e-4]
