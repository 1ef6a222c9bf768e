"""Connecting to Ray: the cluster of a submitted job, or an embedded local instance."""

from __future__ import annotations

import logging
import os
import sys

import ray
import ray.data

# Environment every worker process needs (jobs/runtime_env.yaml carries the same for `ray job submit`).
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    # Ray Train tees every worker print() into its logger as well: each line would show twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # no weight-loading bars from every actor and worker
    "RAY_DATA_LOG_LEVEL": "WARNING",  # one INFO block per dataset execution in every Train worker otherwise
}
_PASSED_THROUGH = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "HF_HOME")


# Idle worker processes a local instance keeps. Ray keeps as many as CPUs and kills the rest after
# a second idle; Ray Data's own actors (its stats and autoscaling-request actors) count too, so
# on 2 CPUs a worker idle through the dedup walk was killed and the write's next task waited
# ~1.3 s for a fresh process.
_LOCAL_WORKERS = {"num_workers_soft_limit": (os.cpu_count() or 1) + 4}
_started_here = False  # this process started the local instance (stop_local_ray may stop it)


def interpreter_first_path() -> str:
    """``PATH`` with this interpreter's bin folder first. DeepSpeed JIT-builds its CPU comm op
    with the ``ninja`` on PATH; two ninja versions (the venv's, the system's) hash the same build
    differently, so alternating between them rebuilt the op (~60 s) on every other Train run."""
    here = os.path.dirname(sys.executable)
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != here]
    return os.pathsep.join([here, *rest])


def init_ray(dashboard: bool = True) -> None:
    """Connect once: to ``RAY_ADDRESS`` when set (``ray job submit`` sets it), else start a local instance.

    The local instance is explicit (``address="local"``) so a stale cluster started by
    ``ray start`` elsewhere on the machine is never joined by accident. ``dashboard=False``
    (standalone refine) starts it without the dashboard; a pipeline starts Ray first, with it.
    """
    if not ray.is_initialized():
        _start_or_join(dashboard)
    context = ray.data.DataContext.get_current()
    # An input error raised in a Ray Data task (a broken file) reaches the CLI as itself, not
    # as Ray's generic UserCodeException, so it prints as one `error:` line (errors.find_user_error).
    context.raise_original_map_exception = True
    if not sys.stdout.isatty():  # job logs and CI: no progress-bar redraws
        context.enable_progress_bars = False


def stop_local_ray() -> None:
    """Stop the local instance this process started (a joined cluster is left running). Called by
    the CLI as a command ends: Ray's own exit hook does the same after a fixed half-second sleep."""
    global _started_here
    if _started_here and ray.is_initialized():
        # The autoscaler monitor goes first: Ray stops it after the GCS, and it then spent its whole
        # one-second grace waiting for the GCS before being killed (1.4 s of shutdown, 0.4 s so).
        node = getattr(ray._private.worker, "_global_node", None)  # no public handle on the head's processes
        if node is not None and hasattr(node, "kill_monitor"):
            node.kill_monitor(check_alive=False)
        ray.shutdown()
    _started_here = False


def _start_or_join(dashboard: bool) -> None:
    env = dict(WORKER_ENV)
    env.update({k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ})
    if os.environ.get("RAY_ADDRESS"):
        # A submitted job already carries its runtime env (jobs/runtime_env.yaml); don't override it.
        ray.init(logging_level=logging.WARNING)
    else:
        env["PATH"] = interpreter_first_path()
        # No node of a local instance is ever drained, so Ray Train's drain watcher has nothing to
        # watch; its actor also made the core worker log an error line about its restart arguments.
        env.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # A local instance's processes inherit the driver's environment, so the variables are set
        # here rather than as a runtime env: workers with a runtime env cannot be the ones Ray
        # starts ahead, and every task and actor then waited for a fresh process (~1 s each).
        os.environ.update(env)
        # The dashboard serves Ray's state API (Ray Train's placement-group cleaner polls it) and UI;
        # a local refine needs neither and saves its start (1.6 s of a 100k-row run's 23 s).
        ray.init(
            address="local", logging_level=logging.WARNING, include_dashboard=dashboard, _system_config=_LOCAL_WORKERS
        )
        global _started_here
        _started_here = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO block per dataset execution otherwise


def return_large_frees_to_the_os(threshold_bytes: int = 1 << 20) -> bool:
    """Serve every allocation of ``threshold_bytes`` or more with a mapping of its own (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``), so a driver's large temporary arrays go back to the OS when
    freed. By default glibc raises that threshold to 32 MiB after the first large free, and the
    arrays below it stay in the heap as resident memory (measured: 29 MB of the refine driver's
    heap at 1M rows). Returns whether it took effect: not on another C library or OS."""
    import ctypes
    import ctypes.util

    m_mmap_threshold = -3  # malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(m_mmap_threshold, threshold_bytes))
    except (OSError, AttributeError):
        return False
