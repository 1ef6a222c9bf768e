"""Embedding backends on the same rows, in one run: speed against bare torch ``encode`` and the
refine decisions each backend's vectors lead to, against torch fp32's.

    python -m platypus_ray.bench.refine --backends --json out/backends.json

Each backend encodes the Alpaca rows and the MMLU probes in a fresh process with every core
(load and a warm-up batch not timed). Decisions: greedy semantic dedup at 0.8 in input order,
and contamination flags (best probe match >= 0.8), both in float64; ``kept_differs`` and
``flags_differ`` count the rows whose outcome differs from torch fp32's. Then the pipeline's
embed stage (Ray Data actor pool) runs the fastest exact backend, timed steady state against
that backend used bare.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


BACKENDS = ("torch", "onnx", "openvino", "onnx-int8", "static")
MMLU = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks" / "mmlu"


def mmlu_probes(folder: Path = MMLU, window_words: int = 64) -> list[str]:
    """The probe texts refine embeds for the shared MMLU subjects (questions, windows, last paragraphs)."""
    from platypus_ray.benchmarks import BenchmarkConfig, load_benchmark
    from platypus_ray.refine.contamination import make_probes

    if not folder.is_dir():
        return []
    items = load_benchmark(BenchmarkConfig(path=str(folder), format="mmlu_csv", name="mmlu"))
    return make_probes(items, window_words).texts


def _encode_in_process(backend: str, texts: list[str], probes: list[str], batch_size: int, export_dir: str | None):
    from platypus_ray.refine.backends import EncoderSpec, load_encoder

    spec = EncoderSpec("all-MiniLM-L6-v2", backend, batch_size=batch_size, threads=os.cpu_count() or 1,
                       export_dir=export_dir)
    encoder = load_encoder(spec)
    encoder.encode(texts[:batch_size])  # warm-up: first-call allocations and graph compilation
    start = time.perf_counter()
    vectors = encoder.encode(texts)
    seconds = time.perf_counter() - start
    return seconds, vectors, encoder.encode(probes) if probes else None, encoder.version


def encode_each(backends, texts, probes, batch_size, export_dir) -> dict[str, tuple]:
    """{backend: (encode seconds, row vectors, probe vectors, version)}, each in a fresh process."""
    out = {}
    for backend in backends:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            out[backend] = pool.submit(_encode_in_process, backend, texts, probes, batch_size, export_dir).result()
        print(f"  {backend}: {len(texts) / out[backend][0]:.1f} rows/s", flush=True)
    return out


def compare_backends(results: dict[str, tuple], threshold: float, flag_threshold: float) -> list[dict]:
    from platypus_ray.refine.calibrate import compare

    ref_s, ref, ref_probes, _ = results["torch"]
    rows = []
    for name, (seconds, vectors, probes, version) in results.items():
        diff, kept, flags = compare(ref, vectors, threshold, flag_threshold, ref_probes, probes)
        rows.append({"name": name, "version": version, "rows_per_s": round(len(ref) / seconds, 1),
                     "ratio_vs_bare": round(ref_s / seconds, 2), "max_abs_cos_diff": diff,
                     "kept_differs": kept, "flags_differ": flags})
    return rows


def pipeline_vs_bare(texts: list[str], backend: str, bare_s: float, batch_size: int, actors: int,
                     export_dir: str | None) -> dict:
    """The refine embed stage with ``backend`` against the same backend used bare (steady state)."""
    from platypus_ray.bench.refine import bench_pipeline_embed

    total_s, steady_s, _ = bench_pipeline_embed(texts, batch_size, actors, backend=backend, export_dir=export_dir)
    return {"backend": backend, "actors": actors, "bare_rows_per_s": round(len(texts) / bare_s, 1),
            "pipeline_rows_per_s": round(len(texts) / steady_s, 1), "ratio_steady": round(bare_s / steady_s, 2),
            "pipeline_end_to_end_rows_per_s": round(len(texts) / total_s, 1)}


def run_backends(texts: list[str], batch_size: int, actors: int, threshold: float, json_path: Path | None,
                 export_dir: str | None = None, backends=BACKENDS) -> dict:
    """The whole comparison; prints the table and writes ``json_path`` when given."""
    probes = mmlu_probes()
    load_before = os.getloadavg()
    print(f"backends  {len(texts)} rows, {len(probes)} MMLU probes, {os.cpu_count()} cores, batch {batch_size}")
    results = encode_each(backends, texts, probes, batch_size, export_dir)
    table = compare_backends(results, threshold, threshold)
    exact = [r for r in table if r["name"] in ("onnx", "openvino") and r["kept_differs"] == r["flags_differ"] == 0]
    best = max(exact, key=lambda r: r["rows_per_s"])["name"] if exact else "torch"
    pipeline = pipeline_vs_bare(texts, best, results[best][0], batch_size, actors, export_dir)
    report = {"rows": len(texts), "probes": len(probes), "threshold": threshold, "cores": os.cpu_count(),
              "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
              "backends": table, "pipeline": pipeline}
    print(f"  {'backend':10s} {'rows/s':>8s} {'x bare':>7s} {'max|dcos|':>10s} {'kept_differs':>13s} {'flags_differ':>13s}")
    for r in table:
        print(f"  {r['name']:10s} {r['rows_per_s']:8.1f} {r['ratio_vs_bare']:7.2f} {r['max_abs_cos_diff']:10.2e} "
              f"{r['kept_differs']:13d} {r['flags_differ']:13d}")
    print(f"  pipeline embed stage with {best}: {pipeline['pipeline_rows_per_s']} rows/s steady vs "
          f"{pipeline['bare_rows_per_s']} bare: {pipeline['ratio_steady']}x (target >= 0.95x)")
    print(f"  load average (1 min) before / after: {report['load_average_before_after']}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        print(f"  wrote {json_path}")
    return report
