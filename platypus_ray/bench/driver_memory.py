"""Refine's driver memory against corpus size (issue 35, "Targets": the driver's peak RSS at 10M rows
within 1.2x of the same run at 1M, and below 1.5 GB):

    python -m platypus_ray.bench.driver_memory [--rows 1000000 10000000] [--json FILE]

One perturbed Alpaca corpus (``bench.refine_e2e.write_corpus``: the sample first, then perturbed
copies) is written once at the largest size; each smaller run reads its first rows, which are the
same corpus at that size. Each size is one ``platypus-ray refine`` process as a user runs it (static
encoder, cache off, no benchmarks, ``keep: first``, ``dedup.mode`` auto). The numbers are the
process's own ``stats.json``: ``driver_peak_rss_mb`` (getrusage: anonymous, file and shared-memory
pages the driver touched; the object store's other processes are not counted) and the RSS after
each step, with the rows that reached semantic dedup (survivors of exact dedup), which is what the
driver's per-row numbers grow with. The ratio is the largest size's peak over the smallest's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from itertools import islice
from pathlib import Path

from platypus_ray.bench.machine import provenance
from platypus_ray.bench.refine import DEFAULT_SOURCE
from platypus_ray.bench.refine_e2e import refine_process, write_corpus

TARGET_RATIO = 1.2
TARGET_PEAK_MB = 1500.0


def _head(corpus: Path, rows: int, path: Path) -> None:
    with corpus.open() as source, path.open("w") as out:
        out.writelines(islice(source, rows))


def measure(source: Path, sizes: list[int], folder: Path) -> list[dict]:
    sizes = sorted(sizes)
    corpus = folder / f"corpus-{sizes[-1]}.jsonl"
    start = time.perf_counter()
    write_corpus(source, sizes[-1], corpus)
    print(f"corpus: {sizes[-1]} perturbed Alpaca rows written in {time.perf_counter() - start:.0f} s")
    runs = []
    for rows in sizes:
        path = corpus
        if rows != sizes[-1]:
            path = folder / f"corpus-{rows}.jsonl"
            _head(corpus, rows, path)
        config = {
            "sources": [{"path": str(path), "name": "alpaca-perturbed"}],
            "embedding": {"backend": "static", "cache": False},
            "dedup": {"keep": "first"},
            "output": str(folder / f"out-{rows}"),
        }
        wall, stats = refine_process(config, folder, f"refine-{rows}", timeout_s=4 * 3600)
        survivors = stats["input_rows"] - stats["invalid"] - stats["removed"].get("exact_duplicate", 0)
        run = {
            "rows": rows,
            "semantic_dedup_rows": survivors,
            "kept": stats["kept"],
            "wall_s": round(wall, 1),
            "driver_peak_rss_mb": stats["driver_peak_rss_mb"],
            "driver_rss_mb_after_step": stats["driver_rss_mb_after_step"],
            "timings_s": stats["timings_s"],
            "dedup_mode": (stats.get("dedup") or {}).get("mode"),
            "certificate_holds": ((stats.get("dedup") or {}).get("certificate") or {}).get("holds"),
        }
        print(
            f"{rows:>11,} rows ({survivors:,} to semantic dedup, {stats['kept']:,} kept): driver peak "
            f"{run['driver_peak_rss_mb']} MB, {wall:.0f} s; after each step (MB): "
            + ", ".join(f"{k} {v}" for k, v in run["driver_rss_mb_after_step"].items())
        )
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Alpaca-style JSON list")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if len(args.rows) < 2:
        parser.error("--rows needs two sizes or more")
    record = provenance("platypus_ray.bench.driver_memory", argv)
    with tempfile.TemporaryDirectory(prefix="platypus-ray-driver-memory-") as tmp:
        runs = measure(args.source, args.rows, Path(tmp))
    small, large = runs[0], runs[-1]
    ratio = round(large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3)
    meets = ratio <= TARGET_RATIO and large["driver_peak_rss_mb"] < TARGET_PEAK_MB
    print(
        f"driver peak at {large['rows']:,} rows / at {small['rows']:,}: {ratio}x "
        f"(target <= {TARGET_RATIO}x and < {TARGET_PEAK_MB:g} MB: {'met' if meets else 'NOT met'}); "
        f"{record['cpu']}, load {record['load_average']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"runs": runs, "peak_ratio": ratio, "target_ratio": TARGET_RATIO, "target_met": meets}
        args.json.write_text(json.dumps({**record, "driver_memory": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
