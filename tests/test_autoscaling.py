"""Ray's real autoscaler on one machine, with the node types of cluster.yaml (autoscaler v1, as
`ray up` runs it) and of kuberay/rayjob.yaml through KubeRay's translator (v2, as KubeRay runs it):
jobs submitted with `ray job submit` as docs/guides/clusters.md shows, node launches and removals read back
from Ray. GPUs are fake (PLATYPUS_RAY_SIMULATE_GPU=1 on the nodes). Each stage's record (node
types launched, node-seconds, where each task ran) goes to autoscaling-rehearsal.json in pytest's
temporary folder (its path is printed: `pytest -s tests/test_autoscaling.py`); tests write nothing
into the checkout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from platypus_ray.devtools.autoscaling import ClusterShape, shape_from_cluster_file, shape_from_rayjob
from platypus_ray.devtools.local_cluster import AutoscalingLocalCluster
from platypus_ray.devtools.rehearsal import StageRecord, record_stage, submit, wait_for_workers_gone
from tests.helpers import train_raw

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
RECORDS: list[StageRecord] = []


def _cluster(shape: ClusterShape, v2: bool):
    cluster = AutoscalingLocalCluster(shape=shape, v2=v2, env={"HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"})
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        assert not cluster.processes(), "teardown left processes of the autoscaling cluster running"


@pytest.fixture(scope="module")
def aws_v1():
    yield from _cluster(shape_from_cluster_file(ROOT / "cluster.yaml"), v2=False)


@pytest.fixture(scope="module")
def kuberay_v2():
    yield from _cluster(shape_from_rayjob(ROOT / "kuberay/rayjob.yaml"), v2=True)


@pytest.fixture(scope="module", autouse=True)
def rehearsal_json(tmp_path_factory):
    yield
    if RECORDS:  # the numbers behind the clusters guide's autoscaling table
        out = tmp_path_factory.getbasetemp() / "autoscaling-rehearsal.json"
        print(f"autoscaling records: {out}")
        out.write_text(json.dumps([r.as_json() for r in RECORDS], indent=1))
        for r in RECORDS:
            print(f"{r.stage} ({r.autoscaler}, {r.cluster_file}): launched {r.launched}, node-seconds {r.node_seconds}")


def run_stage(cluster: AutoscalingLocalCluster, stage: str, entrypoint: list[str], tmp_path: Path) -> StageRecord:
    """Submit, wait for the job, then for the autoscaler to remove the idle workers; what Ray recorded."""
    since = time.time()
    log = tmp_path / f"{stage}.log"
    code = submit(cluster, entrypoint, log, stage, timeout_s=480, cwd=ROOT)
    job_s = time.time() - since
    scale_down_s = wait_for_workers_gone(cluster, timeout_s=90)
    source = Path(cluster.shape.source).relative_to(ROOT).as_posix()
    record = record_stage(cluster, stage, "v2" if cluster.v2 else "v1", source, stage, code, job_s, scale_down_s, since)
    RECORDS.append(record)
    assert code == 0, log.read_text()[-4000:]
    return record


def types_with_gpus(shape: ClusterShape, gpus: int) -> set[str]:
    return {n for n, t in shape.worker_types.items() if t["resources"].get("GPU", 0) == gpus}


def assert_refine_placement(record: StageRecord, shape: ClusterShape) -> None:
    """Embedding on the 1-GPU type, the 8-GPU type never launched, CPU-only reading on a type
    without GPUs, and every node launched for the job removed as idle afterwards."""
    one_gpu, eight_gpu, no_gpu = types_with_gpus(shape, 1), types_with_gpus(shape, 8), types_with_gpus(shape, 0)
    embedders = [types for task, types in record.placements.items() if "Embedder" in task]
    assert embedders and all(set(types) <= one_gpu for types in embedders), record.placements
    assert not eight_gpu & set(record.launched), record.launched
    reads = [types for task, types in record.placements.items() if "_parse_files" in task]
    assert reads and all(set(types) <= no_gpu for types in reads), f"CPU-only reading ran on GPU nodes: {reads}"
    assert record.scale_down_s is not None and record.removed_idle == record.launched, record


def refine_entrypoint(tmp_path: Path) -> list[str]:
    return [
        "python",
        "jobs/refine.py",
        "--config",
        "jobs/configs/demo-refine.yaml",
        "--set",
        "embedding.device=cuda",
        "--set",
        f"output={tmp_path / 'refine'}",
    ]


def test_refine_with_cuda_embedding_on_the_cluster_yaml_node_types(aws_v1, tmp_path):
    record = run_stage(aws_v1, "refine", refine_entrypoint(tmp_path), tmp_path)
    assert_refine_placement(record, aws_v1.shape)


def test_two_gpu_train_workers_land_on_the_type_they_ask_for_and_scale_down(aws_v1, tiny_model, kept_folder, tmp_path):
    """{GPU: 1, CPU: 8} alone fits the 1-GPU type too (measured: the autoscaler put both workers
    there); with accelerator_type:A100 the request names the 8-GPU type of cluster.yaml."""
    request = {"GPU": 1, "CPU": 8, "accelerator_type:A100": 0.001}
    raw = train_raw(
        tiny_model,
        kept_folder,
        str(tmp_path / "storage"),
        "gpu-train",
        training={"max_steps": 4, "eval_every": 4},
        cluster={"use_gpu": True, "resources_per_worker": request},
    )
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    record = run_stage(aws_v1, "train", ["python", "jobs/finetune.py", "--config", str(config)], tmp_path)
    named = {
        n
        for n, t in aws_v1.shape.worker_types.items()
        if all(t["resources"].get(k, 0) >= v for k, v in request.items())
    }
    assert named == types_with_gpus(aws_v1.shape, 8)
    workers = [types for task, types in record.placements.items() if "RayTrainWorker" in task]
    assert workers and all(set(types) <= named for types in workers), record.placements
    assert record.launched.get(next(iter(named))) == 1  # both workers on one 8-GPU node
    assert not types_with_gpus(aws_v1.shape, 1) & set(record.launched), record.launched
    assert json.loads((tmp_path / "storage/gpu-train/result.json").read_text())["step"] == 4
    assert record.scale_down_s is not None and record.removed_idle == record.launched, record


def test_refine_on_autoscaler_v2_with_the_kuberay_node_types(kuberay_v2, tmp_path):
    record = run_stage(kuberay_v2, "refine", refine_entrypoint(tmp_path), tmp_path)
    assert_refine_placement(record, kuberay_v2.shape)
