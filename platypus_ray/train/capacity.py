"""Does a Ray Train worker group fit the Ray instance? One check for train, sweep and pipeline."""

from __future__ import annotations

import logging
import os

import ray

from platypus_ray.core.errors import UserError
from platypus_ray.train.config import ClusterSettings

logger = logging.getLogger(__name__)


def groups_that_fit(cluster: ClusterSettings) -> tuple[int, str]:
    """How many worker groups of this shape the instance holds at once (its total resources
    over one group's demand), and what is short when not even one does."""
    demand = {name: amount * cluster.workers for name, amount in cluster.resources_per_worker.items() if amount}
    capacity = ray.cluster_resources()
    fits = min((int(capacity.get(name, 0) // need) for name, need in demand.items()), default=1)
    short = ", ".join(
        f"{name}: needs {need:g}, has {capacity.get(name, 0):g}"
        for name, need in demand.items()
        if need > capacity.get(name, 0)
    )
    return fits, short


def check_cluster_fits(cluster: ClusterSettings, what: str = "train") -> int:
    """Groups that fit at once (>= 1). On a fixed cluster (the local one) a group that can never
    be placed is an error now, not a hang; on a remote cluster the autoscaler may still add
    nodes, so only warn and count one."""
    fits, short = groups_that_fit(cluster)
    if fits >= 1:
        return fits
    if os.environ.get("RAY_ADDRESS"):
        logger.info("%s: waiting for the autoscaler; the cluster is short of %s", what, short)
        return 1
    raise UserError(
        f"cluster: {cluster.workers} workers x {cluster.resources_per_worker} do not fit this Ray instance "
        f"({short}); on a laptop use e.g. --set cluster.workers=2 --set cluster.use_gpu=false "
        "--set cluster.resources_per_worker.CPU=1 (and drop GPU), or run on the cluster (docs/guides/clusters.md)"
    )
