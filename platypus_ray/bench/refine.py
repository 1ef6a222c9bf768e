"""Refine benchmark: every number is a ratio against a baseline measured in the same run.

    python -m platypus_ray.bench.refine --source ../shared/data/alpaca_5000.json
    python -m platypus_ray.bench.refine --backends --json out/backends.json   # see bench/backends.py
    python -m platypus_ray.bench.refine --rerun --json out/rerun.json         # see bench/rerun.py
    python -m platypus_ray.bench.refine --e2e 100000 --json out/e2e.json      # see bench/refine_e2e.py
    python -m platypus_ray.bench.refine --scale 100000 --text --json out/t.json  # see bench/dedup_text.py
    python -m platypus_ray.bench.refine --sparse --json out/s.json                 # the same on the sparse set
    python -m platypus_ray.bench.refine --versus-semhash 100000 --json out/v.json  # see bench/versus_semhash.py

1. Embed: bare sentence-transformers ``encode`` (one process, all cores) vs the pipeline's
   embed stage (Ray Data actor pool on the same rows and cores), rows/s and ratio.
2. Dedup on those embeddings: tiled all-pairs + greedy, checked identical to brute force.
3. Dedup at scale (default 25k rows of generated MiniLM-like embeddings): the Platypus
   notebook loop and a vectorised one-vs-kept loop vs platypus-ray, with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from platypus_ray.bench.embed_stage import bench_bare_encode, bench_pipeline_embed, load_texts

DEFAULT_SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "alpaca_5000.json"


def bench_dedup(emb: np.ndarray, threshold: float, tile: int) -> tuple[float, np.ndarray]:
    """Exact mode as refine runs it (neighbour lists bounded per row, exact check past the bound)."""
    from platypus_ray.refine.config import DedupConfig
    from platypus_ray.refine.dedup.pair_search import dedup_rows

    start = time.perf_counter()
    cfg = DedupConfig(threshold=threshold, tile_size=tile, keep="first", mode="exact")
    decision = dedup_rows(emb, np.zeros(len(emb)), cfg, num_gpus=0).decision
    return time.perf_counter() - start, decision.keep


def check_refine_output(output: Path, source: Path, threshold: float, batch_size: int) -> None:
    """A `platypus-ray refine` run on ``source`` (dedup.keep first, no benchmarks) must keep
    exactly the rows the brute-force greedy loop keeps over the valid rows, on vectors from a
    bare `encode` in another process; its ledger must hold every input row once."""
    import pandas as pd

    from platypus_ray.devtools.dedup_reference import greedy_reference

    ledger = pd.read_parquet(output / "ledger").sort_values("source_index")
    records = json.loads(source.read_text())
    assert len(ledger) == len(records) and ledger.source_index.tolist() == list(range(len(records))), "ledger rows"
    valid = ledger[ledger.status != "invalid"]
    assert "exact_duplicate" not in set(valid.reason), "this check assumes no exact duplicates"
    from platypus_ray.refine.rows import embed_text

    texts = [embed_text(records[i]["instruction"], records[i].get("input") or "") for i in valid.source_index]
    _, _, vectors = bench_bare_encode(texts, batch_size)
    reference = greedy_reference(vectors, np.arange(len(texts)), threshold)
    kept = (valid.status == "kept").to_numpy()
    differ = int((kept != reference).sum())
    print(
        f"check  {output}: ledger {len(ledger)} rows = input rows; {int((ledger.status == 'invalid').sum())} invalid; "
        f"kept {int(kept.sum())}, brute-force reference keeps {int(reference.sum())}: "
        f"{'identical' if differ == 0 else f'{differ} rows differ'}"
    )


def synthetic_embeddings(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """Unit vectors with about the near-duplicate structure of Alpaca: a few percent of rows
    sit >= 0.8 to an earlier one, the rest are spread out."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    parents = rng.integers(0, n, n)
    near = rng.random(n) < 0.05
    base[near] = base[parents[near]] + 0.35 * rng.normal(size=(int(near.sum()), dim))
    return (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Alpaca-style JSON list")
    parser.add_argument("--rows", type=int, default=None, help="use only the first N rows of --source")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--scale-rows", type=int, default=25_000, help="rows for the dedup-at-scale comparison")
    parser.add_argument("--skip-notebook-loop", action="store_true", help="skip the slowest baseline")
    parser.add_argument(
        "--check-output",
        type=Path,
        default=None,
        help="a refine output of --source (keep: first, no benchmarks) to check against brute force",
    )
    parser.add_argument(
        "--backends",
        action="store_true",
        help="compare the embedding backends (speed and refine decisions vs torch fp32) and stop",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="with --backends, --scale, --rerun or --e2e: write the results here"
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=None,
        metavar="N",
        help="clustered dedup of N generated rows with its measured recall, and stop",
    )
    parser.add_argument("--recall-sample", type=int, default=20_000, help="with --scale: rows checked exactly")
    parser.add_argument(
        "--text",
        action="store_true",
        help="with --scale N: N perturbed rows of --source, static encoder, each mode vs brute force and SemHash",
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="as --scale N --text on the sparse set: Alpaca rows, their output sentences, MMLU items",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="first refine run vs a rerun with another dedup.threshold from the embedding cache, and stop",
    )
    parser.add_argument("--rerun-threshold", type=float, default=0.85, help="with --rerun: the rerun's dedup.threshold")
    parser.add_argument(
        "--e2e",
        type=int,
        default=None,
        metavar="N",
        help="one `platypus-ray refine` run on N perturbed Alpaca rows, rows/s per step, and stop",
    )
    parser.add_argument("--e2e-backend", default="auto", help="with --e2e: embedding.backend")
    parser.add_argument(
        "--versus-semhash",
        type=int,
        default=None,
        metavar="N",
        help="a `platypus-ray refine` process vs a SemHash process on N perturbed Alpaca rows, and stop",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="with --versus-semhash: skip the brute-force kept set"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.versus_semhash is not None:
        from platypus_ray.bench.versus_semhash import run_versus

        run_versus(args.source, args.versus_semhash, args.threshold, args.json, reference=not args.no_reference)
        return 0
    if args.e2e is not None:
        from platypus_ray.bench.refine_e2e import run_e2e

        run_e2e(args.source, args.e2e, args.e2e_backend, args.json)
        return 0
    if args.rerun:  # separate `platypus-ray refine` processes, each starting its own Ray
        from platypus_ray.bench.rerun import run_rerun

        run_rerun(args.source, args.threshold, args.rerun_threshold, args.json)
        return 0

    import ray

    from platypus_ray.core.runtime import init_ray
    from platypus_ray.devtools.dedup_reference import greedy_reference, platypus_notebook_loop

    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    cores = os.cpu_count()
    if (args.scale is not None and args.text) or args.sparse:
        from platypus_ray.bench.dedup_text import main as run_text

        run_text(args.source, args.scale or 0, args.json, sparse=args.sparse)
        return 0
    if args.scale is not None:
        from platypus_ray.bench.scale import main as run_scale

        run_scale(args.scale, args.json, args.recall_sample)
        return 0
    if args.backends:
        from platypus_ray.bench.backends import run_backends

        run_backends(load_texts(args.source, args.rows), args.batch_size, args.actors, args.threshold, args.json)
        return 0

    if args.source.is_file():
        texts = load_texts(args.source, args.rows)
        bare_s, bare_encode_s, bare_vec = bench_bare_encode(texts, args.batch_size)
        profile, ray_vec = bench_pipeline_embed(texts, args.batch_size, args.actors)
        ray_s, ray_steady_s = profile.total_s, profile.steady_s
        n = len(texts)
        print(f"embed  {n} rows, {cores} cores, batch {args.batch_size}")
        print("  steady state (first batch starts -> last batch ends):")
        print(
            f"    bare sentence-transformers encode ({cores} threads) : {n / bare_encode_s:7.1f} rows/s "
            f"({bare_encode_s:.1f} s)"
        )
        print(
            f"    platypus-ray actor pool ({args.actors} actors x 1 thread) : {n / ray_steady_s:7.1f} rows/s "
            f"({ray_steady_s:.1f} s)"
        )
        print(
            f"    ratio pipeline / bare                       : {bare_encode_s / ray_steady_s:7.2f}x  (target >= 0.95x)"
        )
        print("  end to end (process/actor start, imports, model load, encode, collect):")
        print(
            f"    bare : {n / bare_s:7.1f} rows/s ({bare_s:.1f} s)   pipeline : {n / ray_s:7.1f} rows/s ({ray_s:.1f} s)"
            f"   ratio {bare_s / ray_s:.2f}x"
        )
        print(f"  max |difference| of the vectors    : {np.abs(bare_vec - ray_vec).max():.2e}")
        dedup_s, keep = bench_dedup(ray_vec, args.threshold, args.tile)
        reference = greedy_reference(bare_vec, np.arange(len(texts)), args.threshold)
        same = np.array_equal(keep, reference)
        print(
            f"dedup  {len(texts)} rows at {args.threshold}: {dedup_s:.2f} s (first use: task workers start), "
            f"kept {keep.sum()}, "
            "identical to brute force on bare-encode vectors: "
            f"{'yes' if same else f'NO ({int((keep != reference).sum())} rows differ)'}"
        )
    else:
        print(f"embed  skipped: {args.source} not found (pass --source)")

    if args.check_output is not None:
        check_refine_output(args.check_output, args.source, args.threshold, args.batch_size)

    emb = synthetic_embeddings(args.scale_rows)
    ours_s, keep = bench_dedup(emb, args.threshold, args.tile)
    start = time.perf_counter()
    vectorised = greedy_reference(emb, np.arange(len(emb)), args.threshold)
    vectorised_s = time.perf_counter() - start
    print(f"dedup  {args.scale_rows} generated 384-d rows at {args.threshold} (kept {keep.sum()}):")
    print(f"  platypus-ray tiled all-pairs + greedy : {ours_s:8.2f} s")
    print(f"  vectorised one-vs-kept loop (float64) : {vectorised_s:8.2f} s  -> {vectorised_s / ours_s:6.1f}x")
    assert np.array_equal(keep, vectorised), "decisions differ from the brute-force loop"
    if not args.skip_notebook_loop:
        start = time.perf_counter()
        notebook = platypus_notebook_loop(emb, args.threshold)
        notebook_s = time.perf_counter() - start
        print(
            f"  Platypus notebook loop (sklearn)      : {notebook_s:8.2f} s  -> {notebook_s / ours_s:6.1f}x  "
            "(target >= 50x)"
        )
        assert np.array_equal(keep, notebook), "decisions differ from the notebook loop"
    print("  decisions identical to brute force: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
