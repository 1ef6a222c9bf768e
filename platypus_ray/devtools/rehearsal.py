"""What a job made the autoscaler do, read back from Ray: node launches and removals, where each
task and actor ran, node-seconds per node type. Used on an :class:`AutoscalingLocalCluster`
(``tests/test_autoscaling.py``); everything is read with the ``ray`` CLI against the cluster's
dashboard, as a user would (``ray list nodes|tasks|cluster-events``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from platypus_ray.devtools.autoscaling import NODE_TYPE_LABEL
from platypus_ray.devtools.local_cluster import LocalCluster

RAY = str(Path(sys.executable).with_name("ray"))
_ADDED = re.compile(r"Adding (\d+) node\(s\) of type ([\w.-]+)")
_REMOVED = re.compile(r"Removing (\d+) nodes of type ([\w.-]+) \((\w+)\)")


def ray_list(cluster: LocalCluster, kind: str, timeout_s: float = 60.0) -> list[dict]:
    """``ray list <kind> --detail`` (every entry, dead nodes and finished tasks included)."""
    proc = subprocess.run(
        [RAY, "list", kind, "--detail", "--format", "json", "--limit", "10000", "--address", cluster.dashboard_url],
        env={**os.environ, **cluster.client_env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ray list {kind} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def node_types(cluster: LocalCluster) -> dict[str, str]:
    """node id -> node type (the head is ``head``)."""
    return {n["node_id"]: (n.get("labels") or {}).get(NODE_TYPE_LABEL, "head") for n in ray_list(cluster, "nodes")}


def submit(
    cluster: LocalCluster,
    entrypoint: list[str],
    log: Path,
    submission_id: str,
    timeout_s: float,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> int:
    """``ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- <entrypoint>`` as the
    clusters guide shows; the job's exit code (killed and 124 past ``timeout_s``)."""
    args = cluster.job_submit(entrypoint, submission_id)
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=cwd, env={**os.environ, **cluster.client_env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            return 124


def wait_for_workers_gone(cluster: LocalCluster, timeout_s: float) -> float | None:
    """Seconds until only the head is alive (the autoscaler removed every idle worker), or None."""
    start = time.time()
    while time.time() - start < timeout_s:
        if all(n["is_head_node"] for n in ray_list(cluster, "nodes") if n["state"] == "ALIVE"):
            return time.time() - start
        time.sleep(1)
    return None


@dataclass
class StageRecord:
    """One job on the autoscaling cluster: its exit code and what it cost in nodes."""

    stage: str
    autoscaler: str
    cluster_file: str
    exit_code: int
    job_s: float
    scale_down_s: float | None
    launched: dict[str, int] = field(default_factory=dict)  # node type -> nodes launched for the job
    removed_idle: dict[str, int] = field(default_factory=dict)  # node type -> nodes the autoscaler removed as idle
    node_seconds: dict[str, float] = field(default_factory=dict)  # node type -> seconds those nodes were up
    placements: dict[str, list[str]] = field(default_factory=dict)  # "task (resources)" -> node types it ran on
    events: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return asdict(self)


def record_stage(
    cluster: LocalCluster,
    stage: str,
    autoscaler: str,
    cluster_file: str,
    submission_id: str,
    exit_code: int,
    job_s: float,
    scale_down_s: float | None,
    since_s: float,
) -> StageRecord:
    """The nodes started after ``since_s`` (epoch seconds), the autoscaler's events since then, and
    where the job's tasks and actors ran."""
    record = StageRecord(
        stage,
        autoscaler,
        cluster_file,
        exit_code,
        round(job_s, 1),
        None if scale_down_s is None else round(scale_down_s, 1),
    )
    nodes = ray_list(cluster, "nodes")
    types = {n["node_id"]: (n.get("labels") or {}).get(NODE_TYPE_LABEL, "head") for n in nodes}
    seconds: dict[str, float] = defaultdict(float)
    for n in nodes:
        start = _seconds(n["start_time_ms"])
        if n["is_head_node"] or start < since_s:
            continue
        end = time.time() if n["state"] == "ALIVE" else _seconds(n["end_time_ms"])  # still up: so far
        record.launched[types[n["node_id"]]] = record.launched.get(types[n["node_id"]], 0) + 1
        seconds[types[n["node_id"]]] += end - start
    record.node_seconds = {k: round(v, 1) for k, v in seconds.items()}
    removed: Counter = Counter()
    for event in ray_list(cluster, "cluster-events"):
        if _seconds(event["time"]) < since_s - 1:
            continue
        record.events.append(event["message"])
        if (m := _REMOVED.search(event["message"])) and m.group(3) == "idle":
            removed[m.group(2)] += int(m.group(1))
    record.removed_idle = dict(removed)
    job_id = next(j["job_id"] for j in ray_list(cluster, "jobs") if j.get("submission_id") == submission_id)
    places: dict[str, set] = defaultdict(set)
    tasks = [t for t in ray_list(cluster, "tasks") if t["type"] == "NORMAL_TASK"]
    for entry in tasks + ray_list(cluster, "actors"):  # an actor by its repr: MapWorker(MapBatches(Embedder))
        if entry.get("job_id") == job_id and entry.get("node_id"):
            name = entry["name"] if "task_id" in entry else f"actor {entry.get('repr_name') or entry['class_name']}"
            resources = {k: v for k, v in (entry.get("required_resources") or {}).items() if k in ("CPU", "GPU")}
            places[f"{name} {json.dumps(resources, sort_keys=True)}"].add(types.get(entry["node_id"], "?"))
    record.placements = {k: sorted(v) for k, v in sorted(places.items())}
    return record


def _seconds(text: str) -> float:
    """Epoch seconds of the state CLI's local-time stamps ('2026-12-01 15:55:04.164000')."""
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).timestamp()


def launches_in(events: list[str]) -> Counter:
    """node type -> nodes the autoscaler said it was adding (``Adding N node(s) of type T``)."""
    added: Counter = Counter()
    for message in events:
        if m := _ADDED.search(message):
            added[m.group(2)] += int(m.group(1))
    return added
