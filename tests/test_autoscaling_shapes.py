"""The autoscaling local cluster's config, offline: node types read from the real cluster files,
a monitor config Ray's v1 and v2 autoscalers accept, and one clear error for a bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from platypus_ray.core.errors import UserError
from platypus_ray.devtools.autoscaling import HEAD_TYPE, autoscaler_config, read_shape, shape_from_rayjob

ROOT = Path(__file__).parents[1]
FILES = ["cluster.yaml", "cluster-gcp.yaml", "kuberay/rayjob.yaml"]


@pytest.mark.parametrize("name", FILES)
def test_node_types_come_from_the_file_and_make_a_config_both_autoscalers_accept(name):
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    shape = read_shape(ROOT / name)
    assert shape.head_resources["CPU"] == 0 and shape.worker_types
    config = autoscaler_config(shape, "127.0.0.1:6379", idle_timeout_minutes=0.1, v2=False)
    validate_config(prepare_config(config))
    v2 = AutoscalingConfig(config)
    assert v2.get_idle_timeout_s() == pytest.approx(6.0)
    assert set(config["available_node_types"]) == {HEAD_TYPE, *shape.worker_types}
    for type_name, spec in shape.worker_types.items():  # the file's shapes, plus a small object store per fake node
        resources = config["available_node_types"][type_name]["resources"]
        assert {k: v for k, v in resources.items() if k != "object_store_memory"} == spec["resources"]


def test_an_edited_rayjob_shape_is_what_the_cluster_gets(tmp_path):
    job = yaml.safe_load((ROOT / "kuberay/rayjob.yaml").read_text())
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "4"
    group["maxReplicas"] = 2
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(job))
    assert shape_from_rayjob(path).worker_types[group["groupName"]]["resources"]["GPU"] == 4
    assert shape_from_rayjob(path).worker_types[group["groupName"]]["max_workers"] == 2


def test_a_bad_cluster_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("cluster_name: x\nprovider: {type: aws}\n")
    with pytest.raises(UserError, match="no available_node_types or head_node_type"):
        read_shape(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "platypus_ray.devtools.local_cluster", "--autoscaling", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "platypus-ray local-cluster: error:" in proc.stderr and "nope.yaml" in proc.stderr
