"""One `platypus-ray refine` run on a local multi-node Ray cluster against the same run on one node:

    python -m platypus_ray.bench.nodes --rows 1000000 --nodes 3 [--mode clustered] --json out/nodes.json

Each side gets its own local cluster (``devtools.local_cluster``: real ``ray start`` nodes on this
machine) with the same number of logical CPUs: ``--nodes`` nodes of ``--cpus-per-node`` against one
node with all of them. The refine process connects to it as a submitted job does (``RAY_ADDRESS``).
The rows are ``bench.refine --e2e``'s (the Alpaca sample, then perturbed copies); static encoder,
threshold 0.8, ``keep: first``, no benchmarks. Reported: both walls and their ratio, whether every
ledger decision is identical, and the finished Ray tasks per node and per function, read from the
cluster's own task records (Ray's state API) after the run. On one machine the nodes share its
cores, so the ratio measures the cost of crossing nodes, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from platypus_ray.bench.machine import provenance
from platypus_ray.bench.refine import DEFAULT_SOURCE
from platypus_ray.bench.refine_e2e import refine_process, write_corpus
from platypus_ray.devtools.local_cluster import LocalCluster

DECISION_COLUMNS = ["status", "reason", "matched_source_index", "category"]


def _tasks_per_node(cluster: LocalCluster) -> dict[str, dict[str, int]]:
    """Finished Ray tasks and kept-shard calls, by node (the names the nodes were started with) and
    by function, from the cluster's task records; asked in a process of its own, since Ray reads
    the cluster's token from the environment once per process."""
    done = subprocess.run(
        [sys.executable, "-m", "platypus_ray.bench.nodes", "--count-tasks", cluster.dashboard_url],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **cluster.client_env},
    )
    if done.returncode != 0:
        raise SystemExit(f"counting the cluster's tasks failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _count_tasks(address: str) -> dict[str, dict[str, int]]:
    from ray.util.state import list_nodes, list_tasks

    names = {n.node_id: _node_name(n.resources_total) or n.node_id for n in list_nodes(address=address, limit=100)}
    by_node: dict[str, Counter] = {}
    finished: list[tuple[str, str, str | bool | int | float]] = [("state", "=", "FINISHED")]
    for task in list_tasks(address=address, filters=finished, limit=100_000, raise_on_missing_output=False):
        shard_call = task.type == "ACTOR_TASK" and task.func_or_class_name.startswith("KeptShard.")
        if task.type != "NORMAL_TASK" and not shard_call:  # not the actor calls of Ray Data's own bookkeeping
            continue
        node = names.get(task.node_id or "", task.node_id or "?")
        by_node.setdefault(node, Counter())[task.func_or_class_name.split(".")[-1][:60]] += 1
    return {node: dict(counts.most_common()) for node, counts in sorted(by_node.items())}


def _node_name(resources: dict) -> str | None:
    """The name a local-cluster node was started with (its ``node:<name>`` resource)."""
    own = [key[5:] for key in resources if key.startswith("node:") and not key.startswith(("node:1", "node:__"))]
    return own[0] if own else None


def run_nodes(
    source: Path, rows: int, nodes: int, cpus_per_node: int, mode: str, timeout_s: float, argv: list[str] | None
) -> dict:
    with tempfile.TemporaryDirectory(prefix="platypus-ray-nodes-") as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl"
        write_corpus(source, rows, corpus)
        runs: dict[str, Any] = {}
        for name, shape in (("one_node", (1, nodes * cpus_per_node)), ("nodes", (nodes, cpus_per_node))):
            config = {
                "sources": [{"path": str(corpus), "name": "alpaca-perturbed"}],
                "embedding": {"backend": "static", "cache": False},
                "dedup": {"threshold": 0.8, "keep": "first", "mode": mode},
                "output": str(folder / name),
            }
            env = {"HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0", "RAY_MAX_LIMIT_FROM_API_SERVER": "100000"}
            with LocalCluster(cpus_per_node=shape[1], env=env).start(shape[0]) as cluster:
                wall, stats = refine_process(config, folder, name, timeout_s, {**os.environ, **cluster.client_env})
                tasks = _tasks_per_node(cluster)
            runs[name] = {
                "nodes": shape[0],
                "cpus_per_node": shape[1],
                "wall_s": round(wall, 1),
                "kept": stats["kept"],
                "dedup_mode": (stats.get("dedup") or {}).get("mode"),
                "timings_s": stats["timings_s"],
                "driver_peak_rss_mb": stats["driver_peak_rss_mb"],
                "resolution_tasks_per_node": ((stats.get("dedup") or {}).get("resolution") or {}).get("tasks_per_node"),
                "certificate": ((stats.get("dedup") or {}).get("certificate") or {}).get("holds"),
                "kept_shards": (stats.get("dedup") or {}).get("kept_shards"),
                "tasks_per_node": tasks,
            }
        ledgers = [pq.read_table(folder / name / "ledger", columns=DECISION_COLUMNS) for name in ("one_node", "nodes")]
    return {
        "rows": rows,
        "mode": mode,
        **provenance("platypus_ray.bench.nodes", argv),
        "one_node": runs["one_node"],
        "nodes": runs["nodes"],
        "wall_ratio_nodes_vs_one": round(runs["nodes"]["wall_s"] / runs["one_node"]["wall_s"], 2),
        "decisions_identical": ledgers[0].equals(ledgers[1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Alpaca-style JSON list")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--mode", default="auto", choices=["auto", "kept", "exact", "clustered"], help="dedup.mode")
    parser.add_argument("--timeout-s", type=float, default=4 * 3600)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--count-tasks", metavar="DASHBOARD_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count_tasks:
        print(json.dumps(_count_tasks(args.count_tasks)))
        return 0
    if not args.source.exists():
        print(f"skipped: {args.source} is not here (the Alpaca sample; see docs/benchmarks.md)")
        return 0
    result = run_nodes(args.source, args.rows, args.nodes, args.cpus_per_node, args.mode, args.timeout_s, argv)
    one, many = result["one_node"], result["nodes"]
    print(
        f"refine of {args.rows} rows ({one['dedup_mode']}): 1 node x {one['cpus_per_node']} CPUs {one['wall_s']} s, "
        f"{many['nodes']} nodes x {many['cpus_per_node']} CPUs {many['wall_s']} s "
        f"(ratio {result['wall_ratio_nodes_vs_one']}); decisions identical: {result['decisions_identical']}"
    )
    for node, counts in many["tasks_per_node"].items():
        print(f"  {node}: {sum(counts.values())} tasks {counts}")
    print(f"  {result['cpu']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"nodes": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
