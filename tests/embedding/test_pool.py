"""The embedding actor's ``__call__`` on a 3-row batch, without Ray (real MiniLM, offline), and the
actor pool it runs in."""

from __future__ import annotations

import numpy as np
import pytest

from platypus_ray.core.errors import UserError
from platypus_ray.embedding.models import check_model, resolve_model
from platypus_ray.embedding.pool import Embedder


def test_bundled_minilm_resolves_to_a_local_folder():
    path = resolve_model("all-MiniLM-L6-v2")
    assert path.endswith("model") and (__import__("pathlib").Path(path) / "config.json").is_file()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == path


def test_unknown_model_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="embedding.model: 'org/not-here' is not a local folder and the hub is offline"):
        check_model("org/not-here")


def test_embedder_batch_gives_unit_vectors_that_rank_paraphrases_first():
    embedder = Embedder("all-MiniLM-L6-v2", device="cpu", batch_size=8)
    batch = {
        "key": np.array([7, 8, 9]),
        "text": np.array(
            [
                "What is the capital city of Australia?",
                "Which city is the capital of Australia?",
                "Write a haiku about autumn leaves.",
            ],
            dtype=object,
        ),
    }
    out = embedder(batch)
    assert out["key"].tolist() == [7, 8, 9]
    assert out["embedding"].shape == (3, 384) and out["embedding"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)
    sims = out["embedding"] @ out["embedding"].T
    assert sims[0, 1] > 0.9 > 0.3 > sims[0, 2]


def test_one_input_block_is_cut_into_batches_that_every_actor_shares(ray_session, tmp_path):
    """A source file read as one block must still feed every actor, at most ``batch_size`` rows a
    call (the sort's blocks follow the input's: one block went to one actor). Each actor waits in
    its first call until both have one, so on a slow box the first cannot take every batch before
    the second starts; with the block uncut, the second never gets a call and the wait times out."""
    import os
    import time

    import ray

    from platypus_ray.bench.embed_stage import profiled_embedder
    from platypus_ray.embedding import EmbeddingConfig
    from platypus_ray.embedding.pool import embed_texts
    from tests.helpers import build_static_embedder

    texts = [f"row {i} " + "word " * (i % 23) for i in range(96)]
    model = build_static_embedder(tmp_path / "model", texts)
    ds = ray.data.from_items(
        [{"key": k, "text": t, "text_len": len(t)} for k, t in enumerate(texts)], override_num_blocks=1
    )
    log, arrived = tmp_path / "calls.txt", tmp_path / "arrived"
    arrived.mkdir()

    class BothActorsStart(profiled_embedder(str(log))):
        def __call__(self, batch):
            mine = arrived / str(os.getpid())
            if not mine.exists():
                mine.touch()
                deadline = time.monotonic() + 60
                while len(list(arrived.iterdir())) < 2:
                    assert time.monotonic() < deadline, "the other actor got no batch within 60 s"
                    time.sleep(0.05)
            return super().__call__(batch)

    cfg = EmbeddingConfig(model=model, backend="torch", device="cpu", batch_size=8, actors=2, cache=False)
    vectors = embed_texts(ds, len(texts), cfg, embedder=BothActorsStart).blocks.to_matrix()
    calls = np.loadtxt(log, ndmin=2)
    assert len(np.unique(calls[:, 0])) == 2, "both actors took batches"
    assert calls[:, 5].max() <= 8 and calls[:, 5].sum() == len(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_worker_process_builds_its_embedder_once_for_every_task_with_the_same_arguments():
    """tasks.task_embedder keeps the embedder a worker process built (the model loaded once); the
    Ray Data task function and the plain tasks both go through it."""
    from platypus_ray.embedding import pool
    from platypus_ray.embedding.tasks import task_embedder

    built = []

    class Counted:
        def __init__(self, **ctor):
            built.append(ctor)

        def __call__(self, batch):
            return {"key": batch["key"], "embedding": np.ones((len(batch["text"]), 2), dtype=np.float32)}

    ctor = {"model": "m", "device": "cpu", "batch_size": 4}
    first = task_embedder(Counted, ctor)
    out = pool.embed_in_task({"key": np.arange(2), "text": np.array(["a", "b"])}, embedder=Counted, ctor=ctor)
    assert built == [ctor] and task_embedder(Counted, ctor) is first
    assert out["embedding"].shape == (2, 2)
    task_embedder(Counted, {**ctor, "batch_size": 8})
    assert len(built) == 2  # other arguments, another embedder


def test_calls_take_consecutive_rows_across_block_boundaries():
    from platypus_ray.embedding.tasks import cut_calls

    spans = [("a", 0, 3), ("b", 2, 7), ("c", 0, 1)]  # a block read in part ("b" from its row 2) counts its rows only
    assert cut_calls(spans, 4) == [[("a", 0, 3), ("b", 2, 3)], [("b", 3, 7)], [("c", 0, 1)]]
    assert cut_calls(spans, 100) == [spans]
    assert cut_calls([], 4) == []
