"""Benchmark contamination: embedding similarity to test items plus verbatim n-gram overlap.

Categories follow the Platypus paper's review terms; the rule used here is:

* ``duplicate``: cosine >= ``duplicate_threshold`` (0.95), or the row contains at least
  ``duplicate_ngram_coverage`` (50%) of the item's distinct n-grams verbatim: the test
  question itself, perhaps reworded by a word or two.
* ``gray_area``: cosine >= ``gray_area_threshold`` (0.9), or any shared n-gram: the same
  material (a passage, most of a question) in another task, worth a human look.
* ``similar_but_different``: cosine >= ``threshold`` (0.8) and nothing verbatim: same
  topic or template, a different question.

A second embedding signal, ``multilingual`` (on by default; ``contamination.multilingual``),
matches the rows against the benchmarks with the multilingual encoder, in its own vector space
and with its own three thresholds (0.6 / 0.7 / 0.8), so a test question translated into
another language is found. A row is flagged when any signal passes; its category is the
strongest any signal gives; the ledger's ``signal`` names every signal that passed
(``embedding+multilingual+ngram``, in that order), and its score and matched item are those of
the embedding signal with the strongest category (the default model's on a tie), else the
n-gram coverage's (:func:`combine`).

Every flagged row is removed unless its category is left out of ``contamination.remove`` (the
multilingual signal decides on its own category with its own ``remove`` list, all three
categories by default: a translation scores lower than a paraphrase, so its similar_but_different
band still holds leaks). Unlike the Platypus notebook (one nearest training row per test item), all rows that
match are flagged, so paraphrase clusters go too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from platypus_ray.core.blocks import read_columns, rows_only
from platypus_ray.embedding import TO_EMBED_SCHEMA, hash_array
from platypus_ray.refine.config import ContaminationConfig
from platypus_ray.refine.conversations import user_turns
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
        pieces = [item.question, *windows(item.question, window_words)]
        if len(item.question.split()) > window_words:
            paragraphs = [p.strip() for p in item.question.split("\n") if p.strip()]
            if len(paragraphs) > 1:
                pieces.append(paragraphs[-1])
        for piece in dict.fromkeys(pieces):  # unique, in order
            texts.append(piece)
            owners.append(index)
    return Probes(texts, np.asarray(owners, dtype=np.int64))


def windows(text: str, window_words: int) -> list[str]:
    """Overlapping windows (half a window apart) of a text longer than ``window_words`` words, else none."""
    words = text.split()
    if len(words) <= window_words:
        return []
    stride = max(1, window_words // 2)
    return [" ".join(words[start : start + window_words]) for start in range(0, len(words) - stride, stride)]


# Every user turn is checked. The embedded text covers a conversation of one user turn (the Alpaca
# row, whose decisions stay today's); one of several user turns also gets each turn alone and the
# windows of long ones embedded, so a test question in the third turn is not diluted by the rest.


def turn_probes(messages: list[dict[str, str]] | None, embedded: str, window_words: int) -> list[str]:
    """The texts of a row checked against the benchmarks besides its embedded text."""
    users = [] if messages is None else user_turns(list(messages))
    if len(users) < 2:
        return []
    pieces = [piece for user in users for piece in (user, *windows(user, window_words))]
    return [piece for piece in dict.fromkeys(pieces) if piece != embedded]


TURN_COUNT_SCHEMA = pa.schema([("key", pa.int64()), ("count", pa.int64())])


@rows_only(TURN_COUNT_SCHEMA)
def turn_counts(batch: pa.Table, window_words: int) -> pa.Table:
    """Ray Data batch function: how many turn probes each keyed row has."""
    counts = [
        len(turn_probes(m, t, window_words)) for m, t in zip(batch["messages"].to_pylist(), batch["text"].to_pylist())
    ]
    return pa.table([batch["key"], pa.array(counts, pa.int64())], schema=TURN_COUNT_SCHEMA)


@rows_only(TO_EMBED_SCHEMA)
def turn_rows(batch: pa.Table, starts: np.ndarray, window_words: int) -> pa.Table:
    """Ray Data batch function: the turn probes of each keyed row, keyed ``starts[row key]`` on."""
    keys: list[int] = []
    texts: list[str] = []
    for key, m, text in zip(batch["key"].to_pylist(), batch["messages"].to_pylist(), batch["text"].to_pylist()):
        found = turn_probes(m, text, window_words)
        keys += range(int(starts[key]), int(starts[key]) + len(found))
        texts += found
    lengths = [len(t) for t in texts]
    return pa.table([keys, texts, hash_array(texts), lengths], schema=TO_EMBED_SCHEMA)


@dataclass
class TurnProbes:
    """The turn probes to embed (keys ``first_key`` on) and the row key each belongs to."""

    rows: ray.data.Dataset | None
    owner: np.ndarray

    @classmethod
    def of(cls, keyed: ray.data.Dataset, n_rows: int, first_key: int, window_words: int) -> TurnProbes:
        counts = np.zeros(n_rows, dtype=np.int64)
        found = keyed.map_batches(turn_counts, fn_kwargs={"window_words": window_words}, batch_format="pyarrow")
        table = read_columns(found, ["key", "count"], TURN_COUNT_SCHEMA)
        counts[table["key"].to_numpy()] = table["count"].to_numpy()
        owner = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
        if not len(owner):
            return cls(None, owner)
        starts = first_key + np.concatenate([[0], np.cumsum(counts)[:-1]])
        kwargs = {"starts": starts, "window_words": window_words}
        return cls(keyed.map_batches(turn_rows, fn_kwargs=kwargs, batch_format="pyarrow"), owner)


def fold_turns(score: np.ndarray, index: np.ndarray, turn_score: np.ndarray, turn_index: np.ndarray, owner) -> None:
    """Raise each row's best benchmark match (``score``, ``index``, in place) to its best turn probe's."""
    if not len(owner):
        return
    order = np.lexsort((-turn_score, owner))  # per row, its best probe first
    first = np.ones(len(order), dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    top = order[first]
    rows = owner[top]
    better = turn_score[top] > score[rows]
    score[rows[better]] = turn_score[top][better]
    index[rows[better]] = turn_index[top][better]


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


CATEGORIES = ("", "similar_but_different", "gray_area", "duplicate")  # weakest first: a rank is an index


def categorize(score: np.ndarray, coverage: np.ndarray, cfg: ContaminationConfig) -> np.ndarray:
    """Category per row ('' when not flagged) of the default model's signal and the n-grams together,
    by the rule in this module's docstring."""
    signal = EmbeddingSignal("embedding", score, np.full(len(score), -1), *_thresholds(cfg))
    return combine([signal], coverage, np.full(len(score), -1), cfg).category


def _thresholds(cfg) -> tuple[float, float, float]:
    return cfg.threshold, cfg.gray_area_threshold, cfg.duplicate_threshold


@dataclass
class EmbeddingSignal:
    """One embedding signal's best benchmark match per row, in its own model's space, and its thresholds."""

    name: str  # "embedding" (embedding.model) or "multilingual"
    score: np.ndarray  # best cosine per row
    item: np.ndarray  # the benchmark item of that match per row (-1: none)
    threshold: float
    gray_area_threshold: float
    duplicate_threshold: float
    remove: tuple[str, ...] | None = None  # the categories this signal alone removes; None: contamination.remove

    def rank(self) -> np.ndarray:
        """Per row, the index in CATEGORIES this signal alone gives (0: not flagged)."""
        cuts = [self.threshold, self.gray_area_threshold, self.duplicate_threshold]
        return (self.score[:, None] >= np.array(cuts)[None, :]).sum(axis=1)


@dataclass
class Combined:
    """Per row: category ('' when not flagged), the signals that passed, the score and item recorded,
    and each signal's flags (``passed[name]``)."""

    category: np.ndarray
    signal: np.ndarray
    score: np.ndarray
    item: np.ndarray
    passed: dict[str, np.ndarray]
    removed: np.ndarray  # flagged rows that a signal's own category and remove list take out

    @property
    def flagged(self) -> np.ndarray:
        return self.category != ""

    def signal_counts(self) -> dict[str, dict[str, int]]:
        """Per signal: how many rows it flagged, and how many no other signal flagged."""
        counts = {}
        for name, mine in self.passed.items():
            others = np.zeros(len(mine), dtype=bool)
            for other, flags in self.passed.items():
                if other != name:
                    others |= flags
            counts[name] = {"flagged": int(mine.sum()), "only_this_signal": int((mine & ~others).sum())}
        return counts


def combine(
    signals: list[EmbeddingSignal], coverage: np.ndarray, ngram_item: np.ndarray, cfg: ContaminationConfig
) -> Combined:
    """Flagged when any signal passes; the strongest category over the signals; every passing signal
    named (embedding signals in the given order, then ngram); score and item from the embedding
    signal with the strongest category (the earlier on a tie), else the n-gram coverage and item."""
    n = len(coverage)
    ngram_rank = np.where(coverage >= cfg.duplicate_ngram_coverage, 3, np.where(coverage > 0, 2, 0))
    ranks = [s.rank() for s in signals]
    best_rank = np.zeros(n, dtype=np.int64)
    score = coverage.astype(np.float64).copy()
    item = ngram_item.astype(np.int64).copy()
    for s, rank in zip(signals, ranks):
        better = rank > best_rank  # strictly: the earlier signal keeps a tie
        best_rank = np.maximum(best_rank, rank)
        score[better], item[better] = s.score[better], s.item[better]
    rank = np.maximum(best_rank, ngram_rank)
    passed = {s.name: r > 0 for s, r in zip(signals, ranks)} | {"ngram": coverage > 0}
    names = np.full(n, "", dtype=object)
    for name, flags in passed.items():
        names[flags] = np.where(names[flags] == "", name, names[flags] + "+" + name)
    category = np.array(CATEGORIES, dtype=object)[rank]
    # Removal: the signals that follow contamination.remove decide on their strongest category together
    # with the n-grams' (as with one signal); a signal with its own remove list decides on its own category.
    labels = np.array(CATEGORIES, dtype=object)
    shared = ngram_rank
    removed = np.zeros(n, dtype=bool)
    for s, r in zip(signals, ranks):
        if s.remove is None:
            shared = np.maximum(shared, r)
        else:
            removed |= (r > 0) & np.isin(labels[r], list(s.remove))
    removed |= (shared > 0) & np.isin(labels[shared], cfg.remove)
    return Combined(category, names, score, item, passed, removed)
