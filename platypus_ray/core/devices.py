"""Which device a process computes on: where a stage's GPU request meets what this process sees.

Ray schedules by logical resources: a stage that asks for GPUs (``embedding.device: cuda``,
``inference.device: cuda``, ``cluster.use_gpu: true``) is placed on a node that advertises
``GPU``, and Ray sets ``CUDA_VISIBLE_DEVICES`` there. Whether torch can use a GPU is only known
inside the actor or worker, so each one calls :func:`actor_device` itself.

``PLATYPUS_RAY_SIMULATE_GPU=1`` (off by default) is the rehearsal switch: a process that was
given a GPU but sees no CUDA device computes on its CPU path (CPU encoder, CPU scoring, gloo)
while the stage keeps its GPU resource requests, so the autoscaler still launches the GPU node
types of the cluster file. It is meant for the fake GPU nodes of
``python -m platypus_ray.devtools.local_cluster --autoscaling cluster.yaml``, which sets it on every node
(elsewhere: in the nodes' environment, or a runtime env's ``env_vars``). Without it, a GPU
requested and none visible is a :class:`DeviceError` (a broken CUDA image fails loudly instead
of running a 13B model on a CPU).
"""

from __future__ import annotations

import os

from platypus_ray.core.errors import UserError

SIMULATE_GPU_ENV = "PLATYPUS_RAY_SIMULATE_GPU"


class DeviceError(UserError):
    """A GPU was requested but this process sees none, and the simulation switch is off."""


def simulating_gpu() -> bool:
    """Whether ``PLATYPUS_RAY_SIMULATE_GPU`` is on in this process (``1``/``true``/``yes``)."""
    return os.environ.get(SIMULATE_GPU_ENV, "").strip().lower() in {"1", "true", "yes"}


def actor_device(requested: str) -> str:
    """The torch device this process computes on for a stage that asked for ``requested``
    (``cuda`` or ``cpu``; ``auto`` is resolved before actors start): ``cuda`` when torch sees a
    GPU, ``cpu`` for a simulated GPU (the switch on), else a :class:`DeviceError`."""
    if requested != "cuda":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if simulating_gpu():
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " (built without CUDA)")
    raise DeviceError(
        f"device: cuda was requested but this process sees no GPU (CUDA_VISIBLE_DEVICES={visible!r}, {build}) "
        f"on {os.uname().nodename}; run on a node with a working GPU and CUDA build of torch, set the stage's "
        f"device to cpu (use_gpu: false for train), or set {SIMULATE_GPU_ENV}=1 to rehearse on fake GPU nodes"
    )


def resolve_device(device: str) -> str:
    """A stage's ``device`` setting on the driver: ``auto`` means cuda when the Ray cluster has GPUs,
    else cpu; ``cuda`` and ``cpu`` stay (each actor then checks with :func:`actor_device`)."""
    import ray

    if device != "auto":
        return device
    return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


def gpu_here(use_gpu: bool) -> bool:
    """Whether this worker computes on a GPU for a stage with ``use_gpu``: false for a simulated GPU."""
    return use_gpu and actor_device("cuda") == "cuda"


def process_group_backend(on_gpu: bool) -> str:
    """torch.distributed's backend for processes that compute on GPUs (NCCL) or CPUs (gloo)."""
    return "nccl" if on_gpu else "gloo"


def choose_deepspeed_accelerator(on_gpu: bool) -> None:
    """The one place ``DS_ACCELERATOR`` is set, before a process imports DeepSpeed: it then neither
    probes for CUDA nor warns when it falls back to the CPU. A value already in the environment wins."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")


def train_backend(use_gpu: bool) -> str:
    """Ray Train's process-group backend: NCCL for GPU workers, gloo otherwise and for simulated
    GPUs when this torch has no NCCL (the driver may run on a CPU head, so CUDA itself is not
    checked here: each worker checks it with :func:`actor_device`)."""
    if not use_gpu:
        return "gloo"
    import torch.distributed

    return process_group_backend(not (simulating_gpu() and not torch.distributed.is_nccl_available()))
