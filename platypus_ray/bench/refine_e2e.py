"""`platypus-ray refine` end to end on N rows of real text, rows/s for every step:

    python -m platypus_ray.bench.refine --e2e 100000 [--e2e-backend static] --json out/e2e.json

The rows are the Alpaca sample repeated with light, seeded perturbation (a word dropped, two
words swapped, a filler word added, the case changed), so the run meets what a large scraped
corpus holds: exact duplicates, near-duplicates, unique rows; the MMLU subjects beside the
sample are the benchmarks when present. One `platypus-ray refine` process, as a user runs it.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

_FILLERS = ["please", "briefly", "now", "again", "simply", "exactly", "kindly", "here"]


def perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    kind = rng.randrange(4)
    if kind == 0 and len(words) > 3:
        del words[rng.randrange(len(words))]
    elif kind == 1 and len(words) > 2:
        at = rng.randrange(len(words) - 1)
        words[at], words[at + 1] = words[at + 1], words[at]
    elif kind == 2:
        words.insert(rng.randrange(len(words) + 1), rng.choice(_FILLERS))
    else:
        return text.upper() if rng.random() < 0.5 else text.lower()
    return " ".join(words)


def write_corpus(source: Path, rows: int, path: Path, seed: int = 0) -> None:
    records = json.loads(source.read_text())
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(rows):
            record = dict(records[i % len(records)])
            if i >= len(records):  # the first pass is the sample itself
                record["instruction"] = perturb(record["instruction"], rng)
            handle.write(json.dumps(record) + "\n")


def mmlu_benchmarks(source: Path) -> list[dict]:
    """The MMLU subjects shipped beside ``source`` (none when absent), as refine ``benchmarks`` entries."""
    return [
        {"path": str(p), "format": "mmlu_csv", "name": p.stem}
        for p in sorted((source.parent / "benchmarks" / "mmlu").glob("*_test.csv"))
    ]


def refine_process(
    config: dict, folder: Path, name: str, timeout_s: float, env: dict[str, str] | None = None
) -> tuple[float, dict]:
    """Run `platypus-ray refine` on ``config`` in its own process, as a user would: (wall seconds
    from process start to exit, its stats.json). ``env``: its environment (default: this process's)."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "platypus_ray", "refine", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"refine ({name}) failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads((Path(config["output"]) / "stats.json").read_text())


def run_e2e(source: Path, rows: int, backend: str, json_path: Path | None) -> dict:
    benchmarks = mmlu_benchmarks(source)
    with tempfile.TemporaryDirectory(prefix="platypus-ray-e2e-") as tmp:
        folder = Path(tmp)
        write_corpus(source, rows, folder / "corpus.jsonl")
        config = {
            "sources": [{"path": str(folder / "corpus.jsonl"), "name": "alpaca-perturbed"}],
            "benchmarks": benchmarks,
            "embedding": {"backend": backend, "cache": False},
            "output": str(folder / "out"),
        }
        wall, stats = refine_process(config, folder, "refine", timeout_s=4 * 3600)
    steps = {
        name: {"s": s, "rows_per_s": round(rows / s, 1) if s > 0 else None} for name, s in stats["timings_s"].items()
    }
    result = {
        "rows": rows,
        "backend": stats["embedding"].get("backend"),
        "wall_s": round(wall, 1),
        "rows_per_s": round(rows / wall, 1),
        "kept": stats["kept"],
        "removed": stats["removed"],
        "dedup_mode": (stats.get("dedup") or {}).get("mode"),
        "driver_peak_rss_mb": stats["driver_peak_rss_mb"],
        "steps": steps,
    }
    print(
        f"refine end to end: {rows} rows ({len(benchmarks)} benchmark files), backend {result['backend']}, "
        f"dedup {result['dedup_mode']}: {wall:.1f} s wall, {result['rows_per_s']} rows/s; kept {stats['kept']}, "
        f"removed {stats['removed']}; driver peak RSS {stats['driver_peak_rss_mb']} MB"
    )
    for name, step in steps.items():
        print(f"  {name:<15} {step['s']:8.1f} s  {step['rows_per_s'] or '-':>10} rows/s")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"e2e": result}, indent=2))
    return result
