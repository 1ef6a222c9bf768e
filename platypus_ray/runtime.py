"""Connecting to Ray: the cluster of a submitted job, or an embedded local instance."""

from __future__ import annotations

import logging
import os

import ray

# Environment every worker process needs: offline model loading where weights are local,
# quiet tokenizers in forked workers, DeepSpeed on CPU when there is no GPU.
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false"}
_PASSED_THROUGH = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "HF_HOME")


def init_ray() -> None:
    """Connect once: to ``RAY_ADDRESS`` when set (``ray job submit`` sets it), else start a local instance.

    The local instance is explicit (``address="local"``) so a stale cluster started by
    ``ray start`` elsewhere on the machine is never joined by accident.
    """
    if ray.is_initialized():
        return
    env = dict(WORKER_ENV)
    env.update({k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ})
    if os.environ.get("RAY_ADDRESS"):
        # A submitted job already carries its runtime env (jobs/runtime_env.yaml); don't override it.
        ray.init(logging_level=logging.WARNING)
    else:
        ray.init(
            address="local",
            include_dashboard=False,
            runtime_env={"env_vars": env},
            logging_level=logging.WARNING,
        )
