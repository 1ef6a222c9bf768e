"""cluster.yaml passes Ray's own cluster-launcher schema offline (no cloud calls)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).parents[1] / "cluster.yaml"


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_cluster_yaml_is_valid_and_keeps_work_off_the_head():
    config = yaml.safe_load(CLUSTER.read_text())
    validate(config)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    assert all(t["min_workers"] == 0 for t in workers.values())  # everything scales from zero
    assert "p4de.24xlarge" in {t["node_config"]["InstanceType"] for t in workers.values()}


def test_the_schema_check_does_reject_a_bad_config():
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu-1x"]["min_wokers"] = 1
    with pytest.raises(Exception, match="min_wokers"):
        validate(config)
