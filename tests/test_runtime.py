"""Connecting to Ray and letting go of it (platypus_ray/core/runtime.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


def test_an_instance_this_process_joined_is_left_running(ray_session):
    """The test session's instance was started by the test, not by init_ray: a CLI command run
    inside it (or a submitted job's driver) must not stop it."""
    import ray

    from platypus_ray.core import runtime

    runtime.init_ray(dashboard=False)
    runtime.stop_local_ray()
    assert ray.is_initialized()
    assert ray.get(ray.put(1)) == 1


@pytest.mark.slow
def test_the_instance_init_ray_started_is_stopped_with_every_process_it_ran(tmp_path):
    """A local start then stop_local_ray: every head process (raylet, GCS, autoscaler monitor, API
    server, log monitor) has exited when it returns, and the workers see the driver's variables."""
    script = textwrap.dedent("""
        import json, os, ray
        from platypus_ray.core import runtime
        runtime.init_ray(dashboard=False)
        seen = ray.get(ray.remote(lambda: os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH")).remote())
        node = ray._private.worker._global_node
        pids = {kind: [p.process.pid for p in infos] for kind, infos in node.all_processes.items()}
        runtime.stop_local_ray()
        print(json.dumps({"pids": pids, "seen": seen, "initialized": ray.is_initialized()}))
    """)
    from platypus_ray.core.runtime import WORKER_ENV

    env = {k: v for k, v in os.environ.items() if k not in WORKER_ENV}  # the variables come from init_ray alone
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["seen"] == "0" and not result["initialized"]
    assert {"raylet", "gcs_server", "monitor"} <= set(result["pids"])
    alive = []
    for kind, pids in result["pids"].items():
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    if handle.read().split(")")[-1].split()[0] != "Z":  # a zombie has exited
                        alive.append((kind, pid))
            except FileNotFoundError:
                pass
    assert not alive, f"processes of the stopped instance still running: {alive}"
