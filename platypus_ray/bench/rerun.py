"""Threshold rerun from the embedding cache, against the first run, measured in one go:

    python -m platypus_ray.bench.refine --rerun --json out/rerun.json

Three `platypus-ray refine` processes on the Alpaca sample (and the MMLU subjects beside it,
when present), each timed from process start to exit, as a user would see them:

1. first run at ``--threshold``, with an empty cache in a fresh folder (computes every vector);
2. rerun with only ``dedup.threshold`` changed (``--rerun-threshold``), same cache;
3. a fresh run at the rerun threshold with the cache off: the rerun's kept set must equal it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from platypus_ray.bench.refine_e2e import mmlu_benchmarks, refine_process


def _refine(config: dict, folder: Path, name: str) -> tuple[float, dict, list[str]]:
    """A refine process (see :func:`refine_process`) and the ids of the rows it kept."""
    import pandas as pd

    seconds, stats = refine_process(config, folder, name, timeout_s=3600)
    return seconds, stats, pd.read_parquet(Path(config["output"]) / "kept", columns=["id"]).id.tolist()


def run_rerun(source: Path, threshold: float, rerun_threshold: float, json_path: Path | None) -> dict:
    benchmarks = mmlu_benchmarks(source)
    with tempfile.TemporaryDirectory(prefix="platypus-ray-rerun-") as tmp:
        folder = Path(tmp)
        base = {
            "sources": [{"path": str(source), "name": source.stem}],
            "benchmarks": benchmarks,
            "embedding": {"cache": str(folder / "cache")},
        }
        first_s, first, _ = _refine(
            {**base, "dedup": {"threshold": threshold}, "output": str(folder / "first")}, folder, "first"
        )
        rerun_s, rerun, rerun_kept = _refine(
            {**base, "dedup": {"threshold": rerun_threshold}, "output": str(folder / "rerun")}, folder, "rerun"
        )
        fresh_s, _, fresh_kept = _refine(
            {
                **base,
                "embedding": {"cache": False},
                "dedup": {"threshold": rerun_threshold},
                "output": str(folder / "fresh"),
            },
            folder,
            "fresh",
        )
    result = {
        "rows": first["input_rows"],
        "benchmarks": [b["name"] for b in benchmarks],
        "threshold": threshold,
        "rerun_threshold": rerun_threshold,
        "first_s": round(first_s, 1),
        "rerun_s": round(rerun_s, 1),
        "speedup": round(first_s / rerun_s, 2),
        "first_embedding": {k: first["embedding"][k] for k in ("from_cache", "computed")},
        "rerun_embedding": {k: rerun["embedding"][k] for k in ("from_cache", "computed")},
        "rerun_kept": len(rerun_kept),
        "fresh_s": round(fresh_s, 1),
        "kept_identical_to_fresh": rerun_kept == fresh_kept,
    }
    print(
        f"rerun  {result['rows']} rows + {len(benchmarks)} benchmark files, "
        f"threshold {threshold} -> {rerun_threshold}, "
        "wall time of each `platypus-ray refine` process:"
    )
    print(f"  first run (empty cache)    : {first_s:7.1f} s  embedded {first['embedding']['computed']}")
    print(
        f"  rerun (threshold changed)  : {rerun_s:7.1f} s  from cache {rerun['embedding']['from_cache']}, "
        f"computed {rerun['embedding']['computed']}  -> {result['speedup']:.2f}x faster  (target >= 5x)"
    )
    print(
        f"  fresh run, cache off       : {fresh_s:7.1f} s  kept set identical to the rerun's: "
        f"{'yes' if result['kept_identical_to_fresh'] else 'NO'}"
    )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"rerun": result}, indent=2))
    return result
