"""Contamination building blocks: probes for long items, n-gram overlap, categories."""

from __future__ import annotations

import numpy as np

from platypus_ray.refine.config import ContaminationConfig
from platypus_ray.refine.contamination import (
    NgramIndex,
    categorize,
    fold_turns,
    make_probes,
    turn_probes,
    word_ngrams,
)
from platypus_ray.testsets import BenchmarkItem

LONG = " ".join(f"w{k}" for k in range(100)) + "\nWhich of these is right?"


def item(question: str, k: int = 0) -> BenchmarkItem:
    return BenchmarkItem(f"b/x:{k}", "b", question)


def test_short_item_is_one_probe_long_item_gets_windows_and_its_question():
    probes = make_probes([item("Short question?"), item(LONG, 1)], window_words=40)
    assert probes.texts[0] == "Short question?" and probes.item[0] == 0
    long_texts = [t for t, owner in zip(probes.texts, probes.item) if owner == 1]
    assert long_texts[0] == LONG
    assert long_texts[-1] == "Which of these is right?"  # the question part on its own
    windows = long_texts[1:-1]
    assert windows[0].split()[:2] == ["w0", "w1"] and len(windows[0].split()) == 40
    covered = {w for text in windows for w in text.split()}
    assert {f"w{k}" for k in range(100)} <= covered  # every passage word is in some window


def test_word_ngrams_are_case_and_punctuation_insensitive():
    a = word_ngrams("The Quick, brown fox jumps!", 3)
    b = word_ngrams("the quick brown FOX jumps", 3)
    assert len(a) == 3 and set(a.tolist()) == set(b.tolist())
    assert len(word_ngrams("too short", 3)) == 0


def test_ngram_index_reports_best_item_and_coverage():
    q0 = "one two three four five six seven eight"
    q1 = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    index = NgramIndex.build([item(q0), item(q1, 1)], n=4)
    assert index.best_item("unrelated words only here and there again") == (-1, 0.0)
    found, coverage = index.best_item("Intro: alpha beta gamma delta epsilon zeta. Outro.")
    assert found == 1 and np.isclose(coverage, 3 / 7)  # 3 of q1's 7 4-grams
    assert index.best_item(f"copy: {q0}") == (0, 1.0)


def test_categories_follow_the_documented_rule():
    cfg = ContaminationConfig()
    score = np.array([0.5, 0.82, 0.92, 0.97, 0.5, 0.5])
    coverage = np.array([0.0, 0.0, 0.0, 0.0, 0.2, 0.6])
    assert categorize(score, coverage, cfg).tolist() == [
        "",
        "similar_but_different",
        "gray_area",
        "duplicate",
        "gray_area",
        "duplicate",
    ]


def test_turn_probes_check_each_user_turn_of_a_longer_conversation():
    one = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    assert turn_probes(one, "Q?", 8) == []  # one user turn: the embedded text covers it (the Alpaca row)
    assert turn_probes(None, "Q?", 8) == []
    long = " ".join(f"w{k}" for k in range(12))
    talk = [*one, {"role": "user", "content": long}, {"role": "assistant", "content": "B."}]
    assert turn_probes(talk, f"Q?\n{long}", 8) == [
        "Q?",
        long,
        " ".join(f"w{k}" for k in range(8)),
        "w4 w5 w6 w7 w8 w9 w10 w11",
    ]
    assert turn_probes(talk, "Q?", 8)[0] == long  # embed_turns first: the first turn is embedded already


def test_fold_turns_raises_a_row_to_its_best_turn_probe():
    score, index = np.array([0.5, 0.9, 0.1]), np.array([3, 4, -1])
    fold_turns(score, index, np.array([0.7, 0.95, 0.2, 0.6]), np.array([7, 8, 9, 5]), np.array([0, 0, 1, 2]))
    assert score.tolist() == [0.95, 0.9, 0.6] and index.tolist() == [8, 4, 5]
