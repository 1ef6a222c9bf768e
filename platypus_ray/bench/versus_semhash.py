"""Whole process against SemHash: one `platypus-ray refine` process and one SemHash process on the
same JSONL file, the same static encoder and threshold, timed from process start to exit:

    python -m platypus_ray.bench.refine --versus-semhash 100000 --json out/versus.json

The rows are ``bench.refine --e2e``'s (the Alpaca sample, then perturbed copies). refine runs as a
user runs it (``embedding.backend: static``, no benchmarks, cache off, ``keep: first``), writing its
ledger, report and stats. The SemHash process does what its README shows: read the JSONL, build
records of instruction + input, ``SemHash.from_records(..., model=<the same StaticModel>)``,
``self_deduplicate(threshold)``, write the kept records. Both kept sets are compared, as sets of
refine's normalised texts, with each other and (``reference``) with the brute-force greedy rule
over the same vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from platypus_ray.bench.machine import cpu_model
from platypus_ray.bench.refine_e2e import refine_process, write_corpus

# The SemHash side, run as its own process: nothing from platypus-ray but the model folder.
_SEMHASH_SCRIPT = """
import json, sys
from model2vec import StaticModel
from semhash import SemHash
corpus, model_dir, threshold, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
with open(corpus) as handle:
    rows = [json.loads(line) for line in handle if line.strip()]
records = [{"text": (r["instruction"] + " " + r["input"]) if (r.get("input") or "").strip() else r["instruction"]}
           for r in rows]
index = SemHash.from_records(records=records, columns=["text"], model=StaticModel.from_pretrained(model_dir))
kept = index.self_deduplicate(threshold=threshold).selected
with open(out, "w") as handle:
    for record in kept:
        handle.write(json.dumps(record["text"]) + "\\n")
"""


def _static_model_folder() -> str:
    from platypus_ray.embedding.encoders import EncoderSpec, StaticEncoder

    return StaticEncoder(EncoderSpec("all-MiniLM-L6-v2", "static", device="cpu")).folder  # as load_encoder builds it


def semhash_process(corpus: Path, model_dir: str, threshold: float, out: Path, timeout_s: float) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _SEMHASH_SCRIPT, str(corpus), model_dir, str(threshold), str(out)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the SemHash process failed:\n{done.stderr[-3000:]}")
    return seconds


def _refine_kept_texts(output: Path) -> list[str]:
    from platypus_ray.refine.rows import embed_text

    table = pq.read_table(output / "kept", columns=["instruction", "input"])
    return [embed_text(i, x) for i, x in zip(table["instruction"].to_pylist(), table["input"].to_pylist())]


def _difference(kept: set[str], truth: set[str]) -> dict:
    differ = len(kept ^ truth)
    return {"kept": len(kept), "kept_differs": differ, "kept_difference": round(differ / max(len(truth), 1), 5)}


def _reference_kept(
    corpus: Path, model_dir: str, threshold: float, greedy: Callable[..., np.ndarray] | None = None
) -> tuple[set[str], dict]:
    """The brute-force greedy rule (removed iff similar to an earlier kept row) over the rows refine's
    validation and exact dedup leave (of equal normalised instruction + input, the longest output, then the first),
    in input order, with the same static vectors. ``greedy`` (default: devtools' ``greedy_reference``)
    takes (vectors, order, threshold) and gives the keep mask."""
    from model2vec import StaticModel

    from platypus_ray.devtools.dedup_reference import greedy_reference
    from platypus_ray.refine.config import ColumnMapping
    from platypus_ray.refine.rows import dedup_key, embed_text, normalize, validate_record

    best: dict[int, tuple[int, int, str]] = {}  # key -> (-output length, row, text)
    with corpus.open() as handle:
        for row_number, line in enumerate(handle):
            row, _, _ = validate_record(json.loads(line), ColumnMapping())
            if row is None:  # refine's invalid rows (an empty output) take no part
                continue
            candidate = (-len(row["output"]), row_number, embed_text(row["instruction"], row.get("input") or ""))
            key = dedup_key(row["instruction"], row.get("input") or "")
            if key not in best or candidate < best[key]:
                best[key] = candidate
    texts = [text for _, _, text in sorted(best.values(), key=lambda survivor: survivor[1])]
    model = StaticModel.from_pretrained(model_dir)
    start = time.perf_counter()  # the bare encoder on these texts, all cores: the embed stage's baseline
    vectors = model.encode(texts, batch_size=1024).astype(np.float32)
    bare = {"texts": len(texts), "bare_encode_s": round(time.perf_counter() - start, 2)}
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keep = (greedy or greedy_reference)(vectors, np.arange(len(texts)), threshold)
    return {normalize(t) for t, k in zip(texts, keep) if k}, bare


@dataclass
class Measured:
    """One comparison on one corpus: both walls, refine's stats, the three kept sets (normalised texts)."""

    refine_s: float
    semhash_s: float
    stats: dict
    ours: set[str]
    theirs: set[str]
    truth: set[str] | None
    bare: dict | None
    reference_s: float | None


def measure_on_corpus(
    corpus: Path,
    folder: Path,
    name: str,
    threshold: float,
    reference: bool = True,
    dedup: dict | None = None,
) -> Measured:
    """One refine process and one SemHash process on ``corpus`` (an Alpaca JSONL), then the brute-force
    kept set unless ``reference`` is false; ``dedup`` adds keys to refine's ``dedup`` section."""
    from platypus_ray.refine.rows import normalize

    model_dir = _static_model_folder()  # exported once, before either clock starts
    config = {
        "sources": [{"path": str(corpus), "name": name}],
        "embedding": {"backend": "static", "cache": False},
        "dedup": {"threshold": threshold, "keep": "first", **(dedup or {})},
        "output": str(folder / "out"),
    }
    refine_s, stats = refine_process(config, folder, "refine", timeout_s=4 * 3600)
    semhash_s = semhash_process(corpus, model_dir, threshold, folder / "semhash.jsonl", timeout_s=4 * 3600)
    ours = {normalize(t) for t in _refine_kept_texts(folder / "out")}
    theirs = {normalize(json.loads(line)) for line in (folder / "semhash.jsonl").open()}
    truth, bare, reference_s = None, None, None
    if reference:
        start = time.perf_counter()
        truth, bare = _reference_kept(corpus, model_dir, threshold)
        reference_s = time.perf_counter() - start
    return Measured(refine_s, semhash_s, stats, ours, theirs, truth, bare, reference_s)


def run_versus(source: Path, rows: int, threshold: float, json_path: Path | None, reference: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="platypus-ray-versus-") as tmp:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl"
        write_corpus(source, rows, corpus)
        measured = measure_on_corpus(corpus, folder, "alpaca-perturbed", threshold, reference)
    refine_s, semhash_s, stats = measured.refine_s, measured.semhash_s, measured.stats
    ours, theirs, truth, bare = measured.ours, measured.theirs, measured.truth, measured.bare
    import platform

    result: dict[str, Any] = {
        "rows": rows,
        "threshold": threshold,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "refine_wall_s": round(refine_s, 1),
        "semhash_wall_s": round(semhash_s, 1),
        "speed_vs_semhash": round(semhash_s / refine_s, 2),  # above 1: refine is faster
        "refine": {
            "kept": len(ours),
            "embedded_texts": stats["embedding"]["computed"],
            "dedup_mode": (stats.get("dedup") or {}).get("mode"),
            "timings_s": stats["timings_s"],
            "driver_peak_rss_mb": stats["driver_peak_rss_mb"],
        },
        "semhash": {"kept": len(theirs)},
        "refine_vs_semhash_differs": len(ours ^ theirs),
    }
    timings = stats["timings_s"]
    result["refine"]["read_validate_rows_per_s"] = round(rows / timings["read_validate"], 1)
    if bare is not None and timings.get("embed"):
        bare_rate = bare["texts"] / bare["bare_encode_s"]
        stage_rate = stats["embedding"]["computed"] / timings["embed"]
        result["embed"] = {
            "stage_texts_per_s": round(stage_rate, 1),
            "bare_encode_texts_per_s": round(bare_rate, 1),
            "ratio": round(stage_rate / bare_rate, 3),
        }
    if truth is not None:
        result["brute_force_kept"] = len(truth)
        result["refine"].update(_difference(ours, truth))
        result["semhash"].update(_difference(theirs, truth))
    print(
        f"versus SemHash, {rows} rows at {threshold}: refine {refine_s:.1f} s ({result['refine']['dedup_mode']}), "
        f"SemHash {semhash_s:.1f} s: refine at {result['speed_vs_semhash']}x SemHash's speed"
    )
    print(
        f"  kept: refine {len(ours)}, SemHash {len(theirs)}"
        + (
            f", brute force {len(truth)}; differ from it: refine {result['refine']['kept_differs']}, "
            f"SemHash {result['semhash']['kept_differs']}"
            if truth is not None
            else ""
        )
    )
    print(
        "  refine steps (s): "
        + ", ".join(f"{k} {v}" for k, v in stats["timings_s"].items())
        + f"; read+validate {result['refine']['read_validate_rows_per_s']} rows/s; driver peak RSS "
        f"{stats['driver_peak_rss_mb']} MB"
    )
    if "embed" in result:
        print(
            f"  embed stage {result['embed']['stage_texts_per_s']} texts/s vs the bare static encoder "
            f"{result['embed']['bare_encode_texts_per_s']} texts/s: {result['embed']['ratio']}x"
        )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"versus_semhash": result}, indent=2) + "\n")
    return result
