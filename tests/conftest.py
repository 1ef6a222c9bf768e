"""Shared test setup: one small local Ray instance per session, offline models, a tiny LLaMA
and a kept/ Parquet folder built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from platypus_ray.samples import sample_rows  # noqa: E402


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A 2-CPU local Ray instance shared by every test that needs Ray. The dashboard runs, as
    in the CLI: it serves the state API that Ray Train's placement-group cleaner polls to free
    the resources of a trial Tune has stopped."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        logging_level="WARNING",
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from platypus_ray.tiny_model import TinyModelConfig, run

    return str(run(TinyModelConfig(out=str(tmp_path_factory.mktemp("tiny") / "model"), pretrain_steps=100)).out)


@pytest.fixture(scope="session")
def kept_folder(tmp_path_factory):
    """The valid sample rows in the refine stage's kept/ schema."""
    rows = sample_rows()
    folder = tmp_path_factory.mktemp("refine") / "kept"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    return str(folder)
