"""Ray's own autoscaler on one machine: the node types of a cluster file, launched and removed as fake nodes
on 127.0.0.1.

The head is :class:`~platypus_ray.devtools.local_cluster.AutoscalingLocalCluster`, a ``LocalCluster`` head (own temp
dir, ports, token auth, exact-process teardown) with 0 CPUs and ``--autoscaling-config``. Its monitor runs the real
autoscaler, v1 (what ``ray up`` runs) or v2 (``RAY_enable_autoscaler_v2=1``, what KubeRay runs),
with :class:`LoopbackFakeProvider`: each "node" is a raylet and its agents started by the monitor,
advertising the node type's logical resources (``GPU`` included) on loopback. Bin-packing, launch
and idle termination are Ray's. Node types come straight from ``cluster.yaml`` / ``cluster-gcp.yaml``
(:func:`shape_from_cluster_file`) or from a KubeRay ``RayJob`` through KubeRay's own translator
(:func:`shape_from_rayjob`). Fake GPUs: the nodes run with ``PLATYPUS_RAY_SIMULATE_GPU=1``
(see :mod:`platypus_ray.core.devices`).

    python -m platypus_ray.devtools.local_cluster --autoscaling cluster.yaml [--v2]
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from platypus_ray.core.errors import UserError

HEAD_TYPE = "ray.head.default"  # the fake provider tags its head with this name
FAKE_HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
NODE_TYPE_LABEL = "ray.io/node-group"  # the label Ray gives a node of a KubeRay group; set here for every type
# Ray turns --node-ip-address=127.0.0.1 into the machine's outward address unless multi-node is
# off; the fake nodes join in the monitor's process, not by `ray start --address`.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
FAKE_OBJECT_STORE = 100_000_000  # bytes per fake node (Ray's default is 30% of RAM for each one)

if TYPE_CHECKING:
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
else:
    try:  # the provider runs inside the head's monitor process; this module is importable without Ray's autoscaler
        from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
    except ImportError:  # pragma: no cover
        FakeMultiNodeProvider = object


class LoopbackFakeProvider(FakeMultiNodeProvider):
    """Ray's fake multi-node provider, with every node on 127.0.0.1 and joined to the head's GCS
    port (the stock one advertises the machine's outward address and dials GCS on :6379)."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        import ray._private.node
        import ray._private.parameter
        from ray._private import ray_constants
        from ray.autoscaler.tags import (
            NODE_KIND_WORKER,
            STATUS_UP_TO_DATE,
            TAG_RAY_NODE_KIND,
            TAG_RAY_NODE_NAME,
            TAG_RAY_NODE_STATUS,
            TAG_RAY_USER_NODE_TYPE,
        )

        resources = copy.deepcopy(resources)
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            labels = {**labels, NODE_TYPE_LABEL: node_type}
            params = ray._private.parameter.RayParams(
                node_ip_address="127.0.0.1",
                gcs_address=self._gcs_address,
                redis_address=self._gcs_address,
                # Its own runtime-env folder, as on a real machine: nodes share the head's session dir,
                # and one node's agent deleting an unused working dir would delete the job's.
                runtime_env_dir_name=f"runtime_resources_{node_id[-5:]}",
                min_worker_port=0,
                max_worker_port=0,
                dashboard_port=None,
                dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0),
                num_gpus=resources.pop("GPU", 0),
                object_store_memory=resources.pop("object_store_memory", None),
                memory=resources.pop("memory", None),
                resources=resources,
                labels=labels,
                env_vars={
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id,
                    "RAY_CLOUD_INSTANCE_ID": node_id,
                    "RAY_NODE_TYPE_NAME": node_type,
                    ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                    ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels),
                },
            )
            node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            self._nodes[node_id] = {
                "node": node,
                "tags": {
                    TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                    TAG_RAY_USER_NODE_TYPE: node_type,
                    TAG_RAY_NODE_NAME: node_id,
                    TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                    **tags,
                },
            }


@dataclass
class ClusterShape:
    """The autoscaling part of a cluster file: worker types (name -> resources, min/max_workers), the head's
    resources."""

    source: str
    head_resources: dict
    worker_types: dict[str, dict]
    max_workers: int
    idle_timeout_minutes: float
    upscaling_speed: float = 1.0

    def gpu_types(self) -> list[str]:
        return [name for name, t in self.worker_types.items() if t["resources"].get("GPU", 0) > 0]


def _read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(
            f"{path}: cannot read the cluster file ({exc}); pass cluster.yaml, cluster-gcp.yaml or kuberay/rayjob.yaml"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a YAML mapping; pass cluster.yaml, cluster-gcp.yaml or kuberay/rayjob.yaml")
    return data


def _shape_from_autoscaler_config(config: dict, source: str) -> ClusterShape:
    head = config["head_node_type"]
    types = config["available_node_types"]
    workers = {
        name: {
            "resources": dict(t.get("resources", {})),
            "min_workers": int(t.get("min_workers", 0)),
            "max_workers": int(t.get("max_workers", config.get("max_workers", 0))),
        }
        for name, t in types.items()
        if name != head
    }
    return ClusterShape(
        source,
        dict(types[head].get("resources", {})),
        workers,
        int(config.get("max_workers", 0)),
        float(config.get("idle_timeout_minutes", 5)),
        float(config.get("upscaling_speed", 1.0)),
    )


def shape_from_cluster_file(path: str | Path) -> ClusterShape:
    """Node types of a Ray cluster-launcher file (``ray up`` config), as the autoscaler reads them."""
    config = _read_yaml(path)
    missing = [k for k in ("available_node_types", "head_node_type") if k not in config]
    if missing:
        raise UserError(f"{path}: no {' or '.join(missing)}; an autoscaling cluster file names its node types there")
    return _shape_from_autoscaler_config(config, str(path))


def shape_from_rayjob(path: str | Path) -> ClusterShape:
    """Node types of a KubeRay ``RayJob`` (or ``RayCluster``), through the translator KubeRay's in-tree
    autoscaler runs."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    manifest = _read_yaml(path)
    spec = manifest.get("spec", {})
    spec = spec.get("rayClusterSpec", spec) if manifest.get("kind") == "RayJob" else spec
    if "headGroupSpec" not in spec:
        raise UserError(f"{path}: no spec.rayClusterSpec.headGroupSpec; pass a KubeRay RayJob or RayCluster")
    name = manifest.get("metadata", {}).get("name", "cluster")
    config = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
    return _shape_from_autoscaler_config(config, str(path))


def read_shape(path: str | Path) -> ClusterShape:
    """A cluster-launcher file or a KubeRay manifest, told apart by its ``kind``."""
    return (
        shape_from_rayjob(path)
        if _read_yaml(path).get("kind") in ("RayJob", "RayCluster")
        else shape_from_cluster_file(path)
    )


def autoscaler_config(
    shape: ClusterShape,
    gcs_address: str,
    idle_timeout_minutes: float,
    v2: bool,
    object_store_memory: int = FAKE_OBJECT_STORE,
) -> dict:
    """The monitor's config: the shape's node types on the loopback fake provider. v1 reads it raw
    (no defaults merged), so every key the launcher would fill in is given."""
    types = {HEAD_TYPE: {"resources": shape.head_resources, "node_config": {}, "max_workers": 0}}
    for name, t in shape.worker_types.items():
        types[name] = {
            "resources": {**t["resources"], "object_store_memory": object_store_memory},
            "node_config": {},
            "min_workers": t["min_workers"],
            "max_workers": t["max_workers"],
            "labels": {},
        }
    provider = {
        "type": "external",
        "module": f"{__name__}.LoopbackFakeProvider",
        "gcs_address": gcs_address,
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
        "launch_multiple": True,
        "head_node_id": FAKE_HEAD_ID,
    }
    empty_lists = [
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "cluster_synced_files",
        "rsync_exclude",
        "rsync_filter",
    ]
    return {
        "cluster_name": "platypus-ray-rehearsal",
        "max_workers": shape.max_workers,
        "provider": provider,
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "upscaling_speed": shape.upscaling_speed,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "auth": {"ssh_user": "ubuntu"},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{k: [] for k in empty_lists},
    }
