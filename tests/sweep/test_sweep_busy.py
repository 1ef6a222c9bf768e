"""A sweep on a busy box: other work holds the CPUs a trial's worker group needs.

Ray Train waits ``run.placement_timeout_s`` for the group's placement group, releases it,
and retries ``run.placement_retries`` times: the trial either starts once the CPUs free up
or fails with a message saying why; the sweep never waits forever. (The retry that then
succeeds is exercised by the ASHA test in test_sweep_e2e.py, which starts with a CPU held.)
"""

from __future__ import annotations

import time

import pytest

from platypus_ray.core.errors import UserError
from platypus_ray.sweep import run
from tests.sweep.test_sweep_e2e import hold_one_cpu, sweep_config

pytestmark = pytest.mark.slow


def _busy_config(tiny_model, kept_folder, tmp_path, name, retries):
    cfg = sweep_config(tiny_model, kept_folder, str(tmp_path), name, space={"lora.r": [4]}, scheduler={"type": "fifo"})
    cfg.run.placement_timeout_s = 3
    cfg.run.placement_retries = retries
    cfg.training.max_steps, cfg.training.eval_every = 4, 2
    return cfg


@pytest.mark.timeout(300)
def test_a_trial_that_cannot_place_its_workers_fails_clearly_and_releases_them(
    ray_session, tiny_model, kept_folder, tmp_path
):
    from ray.util.placement_group import remove_placement_group

    hog = hold_one_cpu(ray_session)
    try:
        with pytest.raises(
            UserError, match=r"could not place its worker group \(2 x \{'CPU': 1.0\}\) in 2 tries of 3 s"
        ):
            run(_busy_config(tiny_model, kept_folder, tmp_path, "busy", retries=1))
        # Nothing of the trial is left holding CPUs: only the competing reservation remains.
        deadline = time.time() + 30
        while ray_session.available_resources().get("CPU", 0) < 1 and time.time() < deadline:
            time.sleep(1)
        assert ray_session.available_resources().get("CPU", 0) == 1
    finally:
        remove_placement_group(hog)
