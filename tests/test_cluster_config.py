"""Cluster configs checked offline (no cloud calls): Ray's own cluster-launcher schema for
cluster.yaml / cluster-gcp.yaml, required fields of the KubeRay RayJob, the runtime env, and
that every cluster preset under jobs/configs fits the node types the cluster offers."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from platypus_ray.core.runtime import WORKER_ENV
from platypus_ray.devtools.autoscaling import shape_from_cluster_file, shape_from_rayjob
from platypus_ray.evaluate.config import EvaluateConfig
from platypus_ray.pipeline import PipelineConfig
from platypus_ray.refine.config import RefineConfig
from platypus_ray.sweep.config import SweepConfig
from tests.helpers import shipped_presets

ROOT = Path(__file__).parents[1]
CLUSTERS = [ROOT / "cluster.yaml", ROOT / "cluster-gcp.yaml"]
SHARED = "/mnt/cluster_storage"


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def worker_types(config: dict) -> dict[str, dict]:
    return {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}


@pytest.mark.parametrize("path", CLUSTERS, ids=lambda p: p.name)
def test_cluster_config_is_valid_keeps_work_off_the_head_and_shares_storage(path):
    config = yaml.safe_load(path.read_text())
    validate(config)
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = worker_types(config)
    assert all(t["min_workers"] == 0 for t in workers.values())  # everything scales from zero
    # Training nodes, embedding nodes, and CPU nodes for the CPU-only steps (tests/test_autoscaling.py shows why).
    assert {8, 1, 0} <= {t["resources"].get("GPU", 0) for t in workers.values()}
    assert config["idle_timeout_minutes"] > 0
    # Stage outputs live on a filesystem every node mounts, inside the container too.
    assert any(SHARED in cmd and "mount" in cmd for cmd in config["initialization_commands"])
    assert f"-v {SHARED}:{SHARED}" in config["docker"]["run_options"]
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert ".venv" in config["rsync_exclude"]


def test_the_schema_check_does_reject_a_bad_config():
    config = yaml.safe_load(CLUSTERS[0].read_text())
    config["available_node_types"]["gpu-1x-a10g"]["min_wokers"] = 1
    with pytest.raises(Exception, match="min_wokers"):
        validate(config)


def cluster_presets() -> dict[str, object]:
    """The presets under jobs/configs meant for a GPU cluster."""
    presets = {}
    for name, cfg in shipped_presets().items():
        if any(_on_gpu(s) for s in _sections(cfg)):
            presets[name] = cfg
    return presets


def _sections(cfg) -> list:
    if isinstance(cfg, PipelineConfig):
        return [s for s in (cfg.refine, cfg.train) if s is not None]
    return [cfg]


def _on_gpu(section) -> bool:
    if isinstance(section, RefineConfig):
        return section.embedding.device == "cuda"
    if isinstance(section, EvaluateConfig):
        return section.inference.device == "cuda"
    return section.cluster.use_gpu


def _fits(demand: dict[str, float], count: int, config: dict) -> bool:
    """Whether ``count`` bundles of ``demand`` fit on the cluster's worker types at full scale."""
    for node in worker_types(config).values():
        per_node = min((math.floor(node["resources"].get(k, 0) / v) for k, v in demand.items() if v), default=0)
        if per_node and per_node * node["max_workers"] >= count:
            return True
    return False


def test_every_cluster_preset_fits_the_clusters_node_types_and_writes_to_shared_storage():
    presets = cluster_presets()
    assert {
        "platypus2-13b.yaml",
        "platypus2-70b.yaml",
        "refine-cluster.yaml",
        "sweep-13b.yaml",
        "platypus2-13b-pipeline.yaml",
        "evaluate-13b.yaml",
    } <= set(presets)
    for path in CLUSTERS:
        config = yaml.safe_load(path.read_text())
        for name, cfg in presets.items():
            for section in _sections(cfg):
                if isinstance(section, RefineConfig):
                    demand, count = {"GPU": 1, "CPU": section.embedding.cpus_per_actor}, section.embedding.actors
                    outputs = [section.output]
                elif isinstance(section, EvaluateConfig):
                    demand, count = {"GPU": 1, "CPU": section.inference.cpus_per_actor}, section.inference.actors
                    outputs = [section.output]
                else:
                    demand, count = section.cluster.resources_per_worker, section.cluster.workers
                    if isinstance(section, SweepConfig) and section.sweep.max_concurrent_trials != "auto":
                        count *= section.sweep.max_concurrent_trials
                    outputs = [section.run.storage_path, section.data.path]
                assert _fits(demand, count, config), f"{name} needs {count} x {demand}: more than {path.name} offers"
                # A relative path would land in the job's private working-dir copy on one node.
                assert all(o.startswith(SHARED) or "://" in o for o in outputs), (name, outputs)
            if isinstance(cfg, PipelineConfig):
                assert all(step.out.startswith(SHARED) for step in [cfg.merge] if step is not None)
                assert all(step.output.startswith(SHARED) for step in [cfg.evaluate] if step is not None)


def test_the_fit_check_does_catch_a_preset_too_big_for_the_cluster():
    config = yaml.safe_load(CLUSTERS[0].read_text())
    assert _fits({"GPU": 1, "CPU": 8}, 32, config)
    assert not _fits({"GPU": 1, "CPU": 8}, 33, config)  # 4 nodes x 8 GPUs
    assert _fits({"GPU": 1, "CPU": 16}, 24, config)
    assert not _fits({"GPU": 1, "CPU": 16}, 25, config)  # 96 CPUs hold only 6 such workers per node


def test_kuberay_rayjob_has_what_the_operator_needs():
    job = yaml.safe_load((ROOT / "kuberay/rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    # The entrypoint runs a job script and a config that exist in the image (this checkout).
    args = shlex.split(spec["entrypoint"])
    assert args[0] == "python" and (ROOT / args[1]).is_file()
    assert (ROOT / args[args.index("--config") + 1]).is_file()
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"].items() >= WORKER_ENV.items()
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    claims = set()
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        container = pod["containers"][0]
        assert container["image"] and container["resources"]["limits"]
        assert any(m["mountPath"] == SHARED for m in container["volumeMounts"])
        claims |= {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    storage = yaml.safe_load((ROOT / "kuberay/storage.yaml").read_text())
    assert claims == {storage["metadata"]["name"]} and storage["spec"]["accessModes"] == ["ReadWriteMany"]
    groups = cluster["workerGroupSpecs"]
    assert all(g["minReplicas"] == 0 and g["maxReplicas"] >= 1 for g in groups)

    # The same node shapes as cluster.yaml (as KubeRay's autoscaler reads them), so the presets that fit there fit here.
    def shapes(shape):
        return {
            (t["resources"]["CPU"], t["resources"].get("GPU", 0), t["max_workers"]) for t in shape.worker_types.values()
        }

    assert shapes(shape_from_rayjob(ROOT / "kuberay/rayjob.yaml")) == shapes(shape_from_cluster_file(CLUSTERS[0]))


def test_runtime_env_is_accepted_by_ray_and_carries_the_worker_env():
    from ray.runtime_env import RuntimeEnv

    raw = yaml.safe_load((ROOT / "jobs/runtime_env.yaml").read_text())
    env = RuntimeEnv(**raw)
    assert env["env_vars"].items() >= WORKER_ENV.items()
    assert {".venv", "out", ".git"} <= set(raw["excludes"])
