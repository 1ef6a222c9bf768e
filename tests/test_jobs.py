"""`ray job submit` for real: a local head started with `ray start --head` (own temp dir, own
ports on loopback, own auth token), the pipeline job submitted with --working-dir and the
project's runtime env, then exactly that cluster stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from platypus_ray.devtools.local_cluster import LocalCluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def head():
    with LocalCluster(cpus_per_node=2, env={"HF_HUB_OFFLINE": "1"}) as cluster:
        yield cluster
    assert not cluster.processes(), "teardown left processes of the test cluster running"


def submit(cluster: LocalCluster, *job_args: str, timeout: float) -> tuple[str, subprocess.CompletedProcess]:
    """Submit the pipeline job and wait for it (the CLI tails its logs; exit 1 when it FAILED)."""
    submission_id = f"test-{uuid.uuid4().hex[:8]}"
    command = [
        RAY,
        "job",
        "submit",
        "--address",
        cluster.dashboard_url,
        "--submission-id",
        submission_id,
        "--working-dir",
        ".",
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--",
        "python",
        "jobs/pipeline.py",
        "--config",
        "jobs/configs/demo.yaml",
        *job_args,
    ]
    env = {**os.environ, **cluster.client_env}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return submission_id, done


def job_status(cluster: LocalCluster, submission_id: str) -> str:
    done = subprocess.run(
        [RAY, "job", "status", "--address", cluster.dashboard_url, submission_id],
        env={**os.environ, **cluster.client_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


def test_pipeline_job_succeeds_and_writes_every_stage(head, tiny_model, tmp_path):
    out = tmp_path / "out"
    submission_id, done = submit(
        head,
        "--set",
        f"refine.output={out}/refine",
        "--set",
        "refine.embedding.actors=1",
        "--set",
        f"train.model.name_or_path={tiny_model}",
        "--set",
        f"train.run.storage_path={out}/train",
        "--set",
        "train.training.max_steps=4",
        "--set",
        "train.training.eval_every=2",
        "--set",
        f"merge.out={out}/merged",
        "--set",
        f"evaluate.output={out}/eval",
        "--set",
        "evaluate.compare_with_base=false",
        timeout=900,
    )
    (tmp_path / "job.log").write_text(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "succeeded" in job_status(head, submission_id).lower()
    # The job log carries each stage's summary, in order.
    log = done.stdout
    assert (
        log.index("refine: ")
        < log.index("train: ")
        < log.index("merge: saved")
        < log.index("evaluate: fine-tuned")
        < log.index("pipeline: done")
    )
    # ...and not the libraries' noise (console.py): no warning blocks, no Ray Train report dumps.
    for summary in (
        "input rows ->",
        "train plan:",
        "[train] step 4/4 loss",
        "train: 4 steps in",
        "  adapter ",
        "outputs: ",
    ):
        assert summary in log, summary
    for noise in ("FutureWarning", "DeprecationWarning", "warnings.warn(", "TrainingReport("):
        assert noise not in log, noise
    assert "TrainingReport(" in (out / "logs/pipeline.log").read_text()  # routed, not lost
    # Every stage's output, where the config said.
    kept = pq.read_table(out / "refine/kept")
    ledger = pq.read_table(out / "refine/ledger")
    assert 0 < kept.num_rows < ledger.num_rows
    adapter = out / "train/tiny-cpu/adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert (out / "merged/config.json").is_file() and list((out / "merged").glob("*.safetensors"))
    summary = json.loads((out / "eval/summary.json").read_text())
    assert summary["models"]["fine-tuned"]["benchmarks"]["sample-quiz"]["items"] == 12


def test_job_with_an_invalid_config_fails_fast_with_the_message(head, tmp_path):
    submission_id, done = submit(
        head, "--set", "train.lora.rank=4", "--set", f"refine.output={tmp_path}/r", timeout=180
    )
    assert done.returncode != 0
    assert "failed" in job_status(head, submission_id).lower()
    assert "train.lora.rank: unknown key" in done.stdout, done.stdout[-3000:]
    assert not (tmp_path / "r").exists()  # nothing ran
