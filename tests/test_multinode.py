"""Two Ray nodes on one machine (`ray start --head` + `ray start --address`, one CPU each, own
temp dirs and ports): ZeRO-3 training spread across the nodes, and a node lost mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from platypus_ray.local_cluster import LocalCluster
from platypus_ray.train.adapter import check_adapter
from tests.helpers import train_raw

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def two_nodes():
    with LocalCluster(cpus_per_node=1, env={"HF_HUB_OFFLINE": "1"}).start(2) as cluster:
        yield cluster
    assert not cluster.processes(), "teardown left processes of the test cluster running"


def spread_config(tmp_path, tiny_model, kept_folder, name: str, **training) -> Path:
    raw = train_raw(tiny_model, kept_folder, str(tmp_path / "storage"), name,
                    training={"max_steps": 12, "eval_every": 6, **training},
                    cluster={"placement_strategy": "STRICT_SPREAD"}, run={"max_failures": 3})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_finetune_job_spreads_zero3_workers_over_both_nodes(two_nodes, tiny_model, kept_folder, tmp_path):
    config = spread_config(tmp_path, tiny_model, kept_folder, "spread")
    done = subprocess.run(
        [RAY, "job", "submit", "--address", two_nodes.dashboard_url, "--working-dir", ".",
         "--runtime-env", "jobs/runtime_env.yaml", "--", "python", "jobs/finetune.py", "--config", str(config)],
        cwd=ROOT, env={**os.environ, **two_nodes.client_env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    run_dir = tmp_path / "storage/spread"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["nodes"] == 2
    assert len(set(result["worker_nodes"].split(","))) == 2  # one rank per node id
    assert result["zero3_partitioned_params"] == result["zero3_params"] > 0  # ZeRO-3 across the nodes
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert evals[-1] < evals[0]
    assert check_adapter(str(run_dir / "adapter"))  # complete: every LoRA tensor non-empty, lora_B non-zero
    assert "across 2 node(s)" in done.stdout


def test_a_lost_node_is_waited_for_and_the_run_resumes_from_its_checkpoint(two_nodes, tiny_model, kept_folder, tmp_path):
    config = spread_config(tmp_path, tiny_model, kept_folder, "faults", max_steps=40, eval_every=4)
    storage = tmp_path / "storage/faults"
    env = {**os.environ, **two_nodes.client_env}
    log = (tmp_path / "train.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "platypus_ray", "train", "--config", str(config)],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not list(storage.glob("checkpoint_*")):  # the first checkpoint: step 4
            assert driver.poll() is None and time.time() < deadline, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.2)
        worker = next(n for n in two_nodes.nodes if n.name != "head")
        killed = two_nodes.kill_node(worker)
        assert killed
        # Without the node the worker group cannot be placed again (STRICT_SPREAD over 2 nodes):
        # the run waits for resources instead of failing.
        time.sleep(15)
        assert driver.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
        two_nodes.add_node(worker.name)  # the node comes back (a new raylet, a new node id)
        driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    output = (tmp_path / "train.log").read_text()
    assert driver.returncode == 0, output[-4000:]
    result = json.loads((storage / "result.json").read_text())
    assert result["step"] == 40 and result["nodes"] == 2
    steps = [json.loads(line).get("step") for line in (storage / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 40
    assert check_adapter(str(storage / "adapter"))
