"""Evaluate's guards that need no model: conversations refused as validation rows, and the
batch pump that stops (and releases Ray Data's executor) when its consumer leaves early."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.core.errors import UserError
from platypus_ray.evaluate.config import EvaluateConfig


def test_a_kept_folder_of_conversations_is_refused_as_validation_rows(tmp_path):
    from platypus_ray.evaluate.stage import _validation_rows

    kept = tmp_path / "kept"
    kept.mkdir()
    pq.write_table(
        pa.table({"instruction": [None], "input": [None], "output": [None], "messages": ['[{"role": "user"}]']}),
        kept / "part-0.parquet",
    )
    cfg = validate_config(EvaluateConfig, {"model": {"name_or_path": "m"}, "validation": {"path": str(kept)}})
    with pytest.raises(UserError, match=r"evaluate.validation: .* holds conversations .* drop evaluate.validation"):
        _validation_rows(cfg)


def test_the_batch_pump_stops_when_its_consumer_leaves(ray_session):
    from platypus_ray.evaluate.pool import bounded_batches

    ds = ray_session.data.range(40, override_num_blocks=20)
    batches = bounded_batches(ds, timeout_s=60)
    assert len(next(batches)["id"]) > 0
    pump = next(t for t in threading.enumerate() if t.name == "evaluate-batches")
    batches.close()  # the consumer leaves after one batch (an error, the bound)
    pump.join(timeout=30)
    assert not pump.is_alive()
