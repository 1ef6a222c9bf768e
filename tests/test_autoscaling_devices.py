"""The GPU simulation switch (platypus_ray/core/devices.py) that lets stages run on the fake GPU nodes
of the autoscaling local cluster: off by default, a GPU asked for and none visible is an error."""

from __future__ import annotations

import pytest
import torch

from platypus_ray.core.devices import SIMULATE_GPU_ENV, DeviceError, actor_device, simulating_gpu, train_backend

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU paths")


def test_the_switch_is_off_unless_set(monkeypatch):
    monkeypatch.delenv(SIMULATE_GPU_ENV, raising=False)
    assert not simulating_gpu()
    for value, on in [("1", True), ("true", True), ("0", False), ("", False)]:
        monkeypatch.setenv(SIMULATE_GPU_ENV, value)
        assert simulating_gpu() is on


@no_cuda
def test_a_gpu_requested_and_none_visible_is_one_clear_error_without_the_switch(monkeypatch):
    monkeypatch.delenv(SIMULATE_GPU_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what Ray sets on a (fake) GPU node
    assert actor_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match=r"sees no GPU \(CUDA_VISIBLE_DEVICES='0'.*PLATYPUS_RAY_SIMULATE_GPU=1"):
        actor_device("cuda")


@no_cuda
def test_a_simulated_gpu_computes_on_cpu_and_trains_over_gloo(monkeypatch):
    monkeypatch.setenv(SIMULATE_GPU_ENV, "1")
    assert actor_device("cuda") == "cpu"
    assert train_backend(use_gpu=True) == ("nccl" if torch.distributed.is_nccl_available() else "gloo")
    assert train_backend(use_gpu=False) == "gloo"
    monkeypatch.delenv(SIMULATE_GPU_ENV)
    assert train_backend(use_gpu=True) == "nccl"  # as before: a real GPU cluster's workers use NCCL
