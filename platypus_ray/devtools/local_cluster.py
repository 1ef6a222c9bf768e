"""A real multi-process Ray cluster on one machine, for job-submission and multi-node tests.

``ray start --head`` (and optionally more ``ray start --address=...`` nodes), each with its own
temp dir, its own free ports on loopback and a custom resource naming the node, and token
authentication with a token of its own (clients get it from :attr:`client_env`). Teardown stops
exactly the processes of this cluster (found by its temp dirs), never other Ray instances:
``ray stop`` would kill every Ray process on the machine.

    python -m platypus_ray.devtools.local_cluster --nodes 2    # prints the address; Ctrl-C stops it
    python -m platypus_ray.devtools.local_cluster --autoscaling cluster.yaml [--v2]   # rehearse a cluster file
        # (platypus_ray/devtools/autoscaling.py; `ray status` shows the nodes)
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from platypus_ray.core.devices import SIMULATE_GPU_ENV
from platypus_ray.devtools.autoscaling import FAKE_HEAD_ID, LOOPBACK_ONLY, ClusterShape, autoscaler_config

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


@dataclass
class LocalNode:
    name: str  # also a custom resource on the node: {"node:<name>": 1}
    temp_dir: Path


@dataclass
class LocalCluster:
    """Start with :meth:`start` (or as a context manager); ``address`` for ``ray.init``,
    ``dashboard_url`` for ``ray job submit --address``."""

    cpus_per_node: int = 2
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the nodes' processes
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prc-", dir="/tmp")))
    nodes: list[LocalNode] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def client_env(self) -> dict[str, str]:
        """Environment for a process that talks to this cluster (ray.init, ray job submit)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_ADDRESS": self.address}

    def job_submit(self, entrypoint: list[str], submission_id: str | None = None) -> list[str]:
        """``ray job submit`` of ``entrypoint`` to this cluster as docs/guides/clusters.md shows: the working folder
        and the project's runtime env (run it from the repo root, with :attr:`client_env`)."""
        named = ["--submission-id", submission_id] if submission_id else []
        address = ["--address", self.dashboard_url]
        return [
            _ray_cli(),
            "job",
            "submit",
            *address,
            *named,
            "--working-dir",
            ".",
            "--runtime-env",
            "jobs/runtime_env.yaml",
            "--",
            *entrypoint,
        ]

    def start(self, nodes: int = 1) -> LocalCluster:
        self._start_node("head")
        for i in range(1, nodes):
            self.add_node(f"worker{i}")
        return self

    def add_node(self, name: str) -> LocalNode:
        return self._start_node(name)

    def _start_node(self, name: str, attempts: int = 3) -> LocalNode:
        """``ray start`` with fresh free ports; a port taken between choosing and binding it
        (another process on the machine) fails the start, which is then retried."""
        # Unix socket paths are limited to ~107 bytes: keep temp dirs short.
        temp_dir = self.root / name
        node = LocalNode(name, temp_dir)
        from platypus_ray.core.runtime import interpreter_first_path

        # `python` in a job's entrypoint is this interpreter, as on a cluster whose image has one.
        env = {
            **os.environ,
            **self.env,
            **self.client_env,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": interpreter_first_path(),
        }
        env.pop("RAY_ADDRESS")
        for _attempt in range(attempts):
            temp_dir.mkdir(parents=True, exist_ok=True)
            if name == "head":
                self.gcs_port, self.dashboard_port = free_port(), free_port()
                role = [
                    "--head",
                    f"--port={self.gcs_port}",
                    "--include-dashboard=true",
                    f"--dashboard-host={LOOPBACK}",
                    f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={free_port()}",
                ]
            else:
                role = [f"--address={self.address}"]
            proc = subprocess.run(
                [_ray_cli(), "start", *role, *self._node_args(name, temp_dir)],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            if proc.returncode == 0:
                self.nodes.append(node)
                return node
            self._kill(self.processes(node))
            shutil.rmtree(temp_dir, ignore_errors=True)
        self.stop()
        raise RuntimeError(
            f"`ray start` for node {name} failed {attempts} times; last output:\n{proc.stdout}\n{proc.stderr}"
        )

    def _node_args(self, name: str, temp_dir: Path) -> list[str]:
        ports = [free_port() for _ in range(6)]
        taken = set(ports) | {self.gcs_port, self.dashboard_port}
        # Worker ports: a block above Linux's ephemeral range (32768-60999), so free_port()
        # never hands one of them out; a random offset keeps clusters on one machine apart.
        low = random.randrange(61000, 65000, 256)
        while taken & set(range(low, low + 256)):
            low = random.randrange(61000, 65000, 256)
        return [
            f"--node-ip-address={LOOPBACK}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={self.cpus_per_node}",
            f'--resources={{"node:{name}": 1}}',
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--dashboard-agent-listen-port={ports[2]}",
            f"--dashboard-agent-grpc-port={ports[3]}",
            f"--runtime-env-agent-port={ports[4]}",
            f"--metrics-export-port={ports[5]}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 255}",
            "--disable-usage-stats",
            "--object-store-memory=200000000",
        ]

    def processes(self, node: LocalNode | None = None) -> list[psutil.Process]:
        """This cluster's processes (or one node's): every process naming its temp dir."""
        roots = [str(n.temp_dir) for n in ([node] if node else self.nodes)]
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if any(root in cmdline for root in roots):
                found.append(proc)
        return found

    def kill_node(self, node: LocalNode) -> list[int]:
        """SIGKILL one node's processes (a lost machine); returns their pids."""
        procs = self.processes(node)
        self._kill(procs)
        self.nodes.remove(node)
        return [p.pid for p in procs]

    @staticmethod
    def _kill(procs: list[psutil.Process]) -> None:
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)

    def stop(self) -> None:
        """Stop this cluster's processes: SIGTERM, then SIGKILL what is left; remove its temp dirs."""
        procs = self.processes()
        # Workers and drivers started by this cluster's raylets are their children.
        for proc in list(procs):
            with contextlib.suppress(psutil.NoSuchProcess):
                procs += proc.children(recursive=True)
        procs = list({p.pid: p for p in procs}.values())
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self if self.nodes else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class AutoscalingLocalCluster(LocalCluster):
    """A 0-CPU head whose autoscaler launches ``shape``'s worker types as fake nodes on demand and
    removes them after ``idle_timeout_minutes`` idle (the file's own 10 minutes would outlast a test)."""

    shape: ClusterShape | None = None
    idle_timeout_minutes: float = 0.1
    v2: bool = False
    cpus_per_node: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shape is None:
            raise ValueError("AutoscalingLocalCluster needs a shape (read_shape(path))")
        fake = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", SIMULATE_GPU_ENV: "1", **LOOPBACK_ONLY}
        if self.v2:  # as KubeRay's head: the v2 autoscaler, the head known to the provider by its fixed id
            fake.update(
                {
                    "RAY_enable_autoscaler_v2": "1",
                    "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_ID,
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_ID,
                }
            )
        self.env = {**fake, **self.env}

    @property
    def client_env(self) -> dict[str, str]:
        return {**super().client_env, **LOOPBACK_ONLY}  # resolves 127.0.0.1 as the head does

    def _node_args(self, name: str, temp_dir: Path) -> list[str]:
        args = super()._node_args(name, temp_dir)
        if name != "head":
            return args
        if self.shape is None:  # __post_init__ checked it; the field stays assignable
            raise ValueError("AutoscalingLocalCluster needs a shape (read_shape(path))")
        path = self.root / "autoscaling.yaml"  # the GCS port is chosen by now: the provider joins it
        path.write_text(yaml.safe_dump(autoscaler_config(self.shape, self.address, self.idle_timeout_minutes, self.v2)))
        # No GPUs on the head, as on the cluster (a GPU machine would otherwise take the GPU work itself).
        return [*args, f"--autoscaling-config={path}", "--num-gpus=0"]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument(
        "--autoscaling",
        metavar="CLUSTER_FILE",
        help="a 0-CPU head whose Ray autoscaler launches this file's node types as fake nodes "
        "(cluster.yaml, cluster-gcp.yaml or kuberay/rayjob.yaml)",
    )
    parser.add_argument(
        "--v2", action="store_true", help="autoscaler v2, as KubeRay runs it (default: v1, as `ray up`)"
    )
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.5, help="idle workers are removed after this")
    args = parser.parse_args()
    if args.autoscaling:
        from platypus_ray.core.errors import UserError
        from platypus_ray.devtools.autoscaling import read_shape

        try:
            shape = read_shape(args.autoscaling)
        except UserError as exc:
            parser.exit(2, f"platypus-ray local-cluster: error: {exc}\n")
        cluster = AutoscalingLocalCluster(
            shape=shape, v2=args.v2, idle_timeout_minutes=args.idle_timeout_minutes
        ).start()
        print(
            f"Ray cluster with autoscaler {'v2' if args.v2 else 'v1'} and the node types of {args.autoscaling}: "
            f"{', '.join(shape.worker_types)} (fake nodes; GPUs simulated, {args.idle_timeout_minutes} idle minutes)"
        )
    else:
        cluster = LocalCluster(cpus_per_node=args.cpus_per_node).start(args.nodes)
        print(f"Ray cluster with {args.nodes} nodes: address {cluster.address}, dashboard {cluster.dashboard_url}")
    print(f"  export {' '.join(f'{k}={v}' for k, v in cluster.client_env.items())}")
    print("  ray status                                   # the nodes the autoscaler has launched")
    print(
        f"  ray job submit --address {cluster.dashboard_url} --working-dir . "
        "--runtime-env jobs/runtime_env.yaml -- python jobs/pipeline.py --config jobs/configs/demo.yaml"
    )
    print("Ctrl-C stops it.", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` also stops the cluster (finally below)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
