"""Shared test setup: one small local Ray instance per session, offline models, a tiny LLaMA
and a kept/ Parquet folder built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Exported embedders and calibration records (else ~/.cache/platypus-ray) live in a folder of this
# session: no test writes outside its temporary folders (the guard below checks the checkout).
_SESSION_CACHE = tempfile.mkdtemp(prefix="platypus-ray-test-cache-")
os.environ["PLATYPUS_RAY_CACHE"] = _SESSION_CACHE
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Inherited by every Ray instance the tests start (the session's, LocalCluster nodes, CLI subprocesses):
# one ninja for DeepSpeed's op build (see runtime.interpreter_first_path); no node-drain watcher
# actor per worker group (no test drains a node); the Train controller notices a finished run sooner;
# idle task workers are kept 5 minutes, not 1 s: Ray keeps only as many as there are CPUs, and each
# Ray Data operation then waited for new workers to start (the refine end-to-end tests: 120 s -> 81 s).
from platypus_ray.core.runtime import WORKER_ENV, interpreter_first_path

os.environ["PATH"] = interpreter_first_path()
os.environ.update(
    {
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
        "RAY_idle_worker_killing_time_threshold_ms": "300000",
        **{k: v for k, v in WORKER_ENV.items() if k not in os.environ},
    }
)

set_hypothesis_home_dir(os.path.join(_SESSION_CACHE, "hypothesis"))  # not .hypothesis/ in the checkout
# No per-example deadline: on a loaded 2-core box an example's time says nothing about its correctness.
settings.register_profile("tests", database=None, deadline=None)
settings.load_profile("tests")
ROOT = Path(__file__).parents[1]
# Folders tools keep in a checkout (the venv, caches): not written by the tests' code under test.
_TOOL_FOLDERS = (".venv/", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", ".gpu/", "__pycache__/", ".egg-info/")

from platypus_ray.core import log
from platypus_ray.samples import sample_rows

log.setup()  # library lines reach the captured stdout/stderr as in the CLI (each call of a stage is checked there)


def pytest_collection_modifyitems(items):
    """The tests that start their own Ray cluster run first, before the session's instance
    exists: it would otherwise sit beside them on the same 2 cores."""
    own_cluster = ("test_multinode.py",)
    items.sort(key=lambda item: item.path.name not in own_cluster)


def _files_in_checkout() -> set[str] | None:
    """Untracked and ignored files of the checkout, tool folders aside (None outside a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = {line[3:] for line in listed.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(folder in p or p.startswith(folder) for folder in _TOOL_FOLDERS)}


@pytest.fixture(scope="session", autouse=True)
def nothing_written_outside_tmp():
    """Every test writes under its temporary folders: the checkout holds no new file afterwards."""
    before = _files_in_checkout()
    yield
    after = _files_in_checkout()
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, f"tests wrote into the checkout: {new[:20]}"


@pytest.fixture(autouse=True)
def no_reservation_left_behind(request):
    """After a test on the session's Ray, remove any placement group it left (a failed sweep or
    train test can leave a reservation pending): one failure must not starve every later test."""
    yield
    if "ray_session" not in request.fixturenames:
        return
    import ray
    from ray.util import placement_group_table
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if not ray.is_initialized():
        return
    for pg_id, info in placement_group_table().items():
        if info["state"] in ("PENDING", "CREATED", "RESCHEDULING"):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


@pytest.fixture(scope="session")
def ray_session():
    """A 2-CPU local Ray instance shared by every test that needs Ray. The dashboard runs, as
    in the CLI: it serves the state API that Ray Train's placement-group cleaner polls to free
    the resources of a trial Tune has stopped."""
    import ray

    # A short folder of its own: Ray's socket paths must stay under 108 bytes, and pytest's
    # temporary folders can be too long for them (deep base folders, macOS's /private/var/...).
    temp_dir = tempfile.mkdtemp(prefix="prs-", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        logging_level="WARNING",
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from platypus_ray.devtools.tiny_model import TinyModelConfig, run

    return str(run(TinyModelConfig(out=str(tmp_path_factory.mktemp("tiny") / "model"), pretrain_steps=100)).out)


@pytest.fixture(scope="session")
def kept_folder(tmp_path_factory):
    """The valid sample rows in the refine stage's kept/ schema."""
    rows = sample_rows()
    folder = tmp_path_factory.mktemp("refine") / "kept"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    return str(folder)


@pytest.fixture
def stage_inputs(tmp_path, monkeypatch):
    """A fake model, adapter, data and benchmark (nothing past a preflight may read them), an
    unrelated non-empty folder, and the working directory at ``tmp_path``."""
    import json

    monkeypatch.chdir(tmp_path)
    model, adapter, kept, foreign = (tmp_path / name for name in ("model", "adapter", "kept", "foreign"))
    for folder in (model, adapter, kept, foreign):
        folder.mkdir()
    (model / "config.json").write_text("{}")
    (adapter / "adapter_config.json").write_text("{}")
    (foreign / "thesis.tex").write_text("years of work")
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": "Which planet is red?"}) + "\n")
    (tmp_path / "data.jsonl").write_text(json.dumps({"instruction": "Name a colour.", "output": "Red."}) + "\n")
    return tmp_path
