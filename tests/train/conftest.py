"""Train fixtures: a tiny LLaMA built once per session and a kept/ Parquet folder."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from platypus_ray.samples import sample_rows


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


def train_config(model: str, data: str, storage: str, name: str, **sections):
    """A 2-worker CPU ZeRO-3 config for the tiny model; ``sections`` override per section."""
    from platypus_ray.config import validate_config
    from platypus_ray.train.config import TrainConfig

    raw = {
        "model": {"name_or_path": model},
        "data": {"path": data, "val_size": 0.1, "cutoff_len": 128},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "mlp"},
        "training": {"learning_rate": 5e-3, "global_batch_size": 8, "micro_batch_size": 4, "max_steps": 12,
                     "warmup_steps": 2, "eval_every": 6, "logging_steps": 1},
        "cluster": {"workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
        "run": {"name": name, "storage_path": storage, "max_failures": 0},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate_config(TrainConfig, raw)
