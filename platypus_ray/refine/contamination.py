"""Benchmark contamination: embedding similarity to test items plus verbatim n-gram overlap.

Categories follow the Platypus paper's review terms; the rule used here is:

* ``duplicate``: cosine >= ``duplicate_threshold`` (0.95), or the row contains at least
  ``duplicate_ngram_coverage`` (50%) of the item's distinct n-grams verbatim: the test
  question itself, perhaps reworded by a word or two.
* ``gray_area``: cosine >= ``gray_area_threshold`` (0.9), or any shared n-gram: the same
  material (a passage, most of a question) in another task, worth a human look.
* ``similar_but_different``: cosine >= ``threshold`` (0.8) and nothing verbatim: same
  topic or template, a different question.

Every flagged row is removed unless its category is left out of ``contamination.remove``;
unlike the Platypus notebook (one nearest training row per test item), all rows that
match are flagged, so paraphrase clusters go too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from platypus_ray.core.blocks import rows_only
from platypus_ray.refine.config import ContaminationConfig
from platypus_ray.refine.rows import full_text
from platypus_ray.testsets import BenchmarkItem

_WORDS = re.compile(r"\w+")
_PRIME = np.uint64(1099511628211)  # FNV prime: mixes word hashes into an n-gram hash


@dataclass
class Probes:
    """Texts embedded per benchmark item: the question, and windows of long passages."""

    texts: list[str]
    item: np.ndarray  # item index of each probe


def make_probes(items: list[BenchmarkItem], window_words: int) -> Probes:
    """One probe per question; items longer than ``window_words`` add overlapping windows and
    their last paragraph, so a row that copies only the passage or only the question matches."""
    texts: list[str] = []
    owners: list[int] = []
    for index, item in enumerate(items):
        pieces = [item.question]
        words = item.question.split()
        if len(words) > window_words:
            stride = max(1, window_words // 2)
            for start in range(0, len(words) - stride, stride):
                pieces.append(" ".join(words[start : start + window_words]))
            paragraphs = [p.strip() for p in item.question.split("\n") if p.strip()]
            if len(paragraphs) > 1:
                pieces.append(paragraphs[-1])
        for piece in dict.fromkeys(pieces):  # unique, in order
            texts.append(piece)
            owners.append(index)
    return Probes(texts, np.asarray(owners, dtype=np.int64))


def word_ngrams(text: str, n: int) -> np.ndarray:
    """Distinct hashes of the lower-cased word n-grams of ``text`` (empty if it has fewer than n words)."""
    words = _WORDS.findall(text.lower())
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    word_hashes = np.array(
        [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in words],
        dtype=np.uint64,
    )
    count = len(words) - n + 1
    grams = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around arithmetic mod 2**64 is the point
        for k in range(n):
            grams = grams * _PRIME + word_hashes[k : k + count]
    return np.unique(grams)


@dataclass
class NgramIndex:
    """(n-gram hash, item) pairs sorted by hash, and each item's distinct n-gram count."""

    n: int
    grams: np.ndarray
    items: np.ndarray
    item_gram_counts: np.ndarray

    @classmethod
    def build(cls, items: list[BenchmarkItem], n: int) -> NgramIndex:
        per_item = [word_ngrams(item.question, n) for item in items]
        counts = np.array([len(g) for g in per_item], dtype=np.int64)
        grams = np.concatenate(per_item) if per_item else np.empty(0, dtype=np.uint64)
        owners = np.repeat(np.arange(len(items), dtype=np.int64), counts)
        order = np.argsort(grams, kind="stable")
        return cls(n, grams[order], owners[order], counts)

    def best_item(self, text: str) -> tuple[int, float]:
        """The item sharing the largest fraction of its n-grams with ``text``: (index, coverage)."""
        if len(self.grams) == 0:
            return -1, 0.0
        grams = word_ngrams(text, self.n)
        left = np.searchsorted(self.grams, grams, side="left")
        right = np.searchsorted(self.grams, grams, side="right")
        hit = right > left
        if not hit.any():
            return -1, 0.0
        owners = np.concatenate([self.items[a:b] for a, b in zip(left[hit], right[hit])])
        found, shared = np.unique(owners, return_counts=True)
        coverage = shared / self.item_gram_counts[found]
        best = int(np.argmax(coverage))
        return int(found[best]), float(coverage[best])


NGRAM_SCHEMA = pa.schema([("key", pa.int64()), ("ngram_item", pa.int64()), ("ngram_coverage", pa.float64())])


@rows_only(NGRAM_SCHEMA)
def ngram_matches(batch: dict[str, np.ndarray], index: NgramIndex) -> dict[str, np.ndarray]:
    """Ray Data batch function: n-gram best item and coverage for each row's full text (every turn)."""
    messages = batch["messages"] if "messages" in batch else [None] * len(batch["key"])
    results = [
        index.best_item(full_text(ins, inp, out, None if m is None else list(m)))
        for ins, inp, out, m in zip(batch["instruction"], batch["input"], batch["output"], messages)
    ]
    return {
        "key": batch["key"],
        "ngram_item": np.array([r[0] for r in results], dtype=np.int64),
        "ngram_coverage": np.array([r[1] for r in results], dtype=np.float64),
    }


def categorize(score: np.ndarray, coverage: np.ndarray, cfg: ContaminationConfig) -> np.ndarray:
    """Category per row ('' when not flagged), by the rule in this module's docstring."""
    category = np.full(len(score), "", dtype=object)
    flagged = (score >= cfg.threshold) | (coverage > 0)
    category[flagged] = "similar_but_different"
    category[flagged & ((score >= cfg.gray_area_threshold) | (coverage > 0))] = "gray_area"
    category[(score >= cfg.duplicate_threshold) | (coverage >= cfg.duplicate_ngram_coverage)] = "duplicate"
    return category
