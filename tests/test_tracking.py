"""Tracking config and failure modes that need no Ray: an unreachable server fails at once."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from platypus_ray.errors import UserError
from platypus_ray.tracking import TrackingSettings, check_reachable, flatten, remote_storage_problems


def test_an_unreachable_tracking_server_fails_fast_with_the_uri():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with pytest.raises(UserError, match=rf"tracking.mlflow: the tracking server {uri} does not answer"):
        check_reachable(uri)
    assert time.perf_counter() - start < 30


def test_local_store_uri_and_remote_storage_rules(tmp_path):
    assert TrackingSettings(mlflow=True).mlflow_uri(str(tmp_path)) == f"file:{tmp_path}/mlruns"
    assert TrackingSettings().mlflow_uri(str(tmp_path)) is None
    assert TrackingSettings(mlflow="http://host:5000").mlflow_uri("x") == "http://host:5000"
    problems = remote_storage_problems(TrackingSettings(mlflow=True, tensorboard=True), "s3://bucket/runs")
    assert len(problems) == 2 and "give a tracking server URI" in problems[0]
    assert flatten({"lora": {"r": 8, "target_modules": ["q_proj"]}, "x": None}) == {
        "lora.r": "8", "lora.target_modules": '["q_proj"]', "x": "null"}


def test_result_readers_do_not_import_torch():
    code = "import sys, platypus_ray.sweep.report, platypus_ray.sweep.runs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
