"""Embedding backends on the same rows, in one run: speed against bare torch ``encode`` and the
refine decisions each backend's vectors lead to, against torch fp32's.

    python -m platypus_ray.bench.refine --backends --json out/backends.json

The baseline, ``bare``, is sentence-transformers ``encode`` with its defaults (32 rows a batch)
on every core. Each backend encodes the Alpaca rows and the MMLU probes in a fresh process with
every core (load and a warm-up batch not timed), twice: all backends in order, then in reverse
order, so a load that drifts during the run (other work on a shared box) weighs on every
backend alike; rows/s is over both passes. Decisions: greedy semantic dedup at 0.8 in input
order, and contamination flags (best probe match >= 0.8), both in float64; ``kept_differs``
and ``flags_differ`` count the rows whose outcome differs from torch fp32's (the ``torch``
backend). Then the pipeline's embed stage (Ray Data actor pool) runs the fastest exact
backend, timed steady state against that backend used bare: with the configured actors (one
CPU each) and with one actor holding every core.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

BACKENDS = ("torch", "onnx", "openvino", "onnx-int8", "static")
BARE = "bare"  # sentence-transformers encode with its defaults: the speed baseline
MMLU = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks" / "mmlu"


def mmlu_probes(folder: Path = MMLU, window_words: int = 64) -> list[str]:
    """The probe texts refine embeds for the shared MMLU subjects (questions, windows, last paragraphs)."""
    from platypus_ray.refine.contamination import make_probes
    from platypus_ray.testsets import BenchmarkConfig, load_benchmark

    if not folder.is_dir():
        return []
    items = load_benchmark(BenchmarkConfig(path=str(folder), format="mmlu_csv", name="mmlu"))
    return make_probes(items, window_words).texts


def _bare_encoder():
    """sentence-transformers as a user calls it: ``encode`` with its default batch size."""
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    from platypus_ray.embedding.models import resolve_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    encode = lambda texts: model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return encode, f"sentence-transformers {sentence_transformers.__version__} encode, defaults"


def _encoder(backend: str, batch_size: int, threads: int, export_dir: str | None):
    from platypus_ray.embedding.encoders import EncoderSpec, load_encoder

    return load_encoder(
        EncoderSpec("all-MiniLM-L6-v2", backend, batch_size=batch_size, threads=threads, export_dir=export_dir)
    )


def _encode_in_process(backend: str, texts: list[str], probes: list[str], batch_size: int, export_dir: str | None):
    if backend == BARE:
        encode, version = _bare_encoder()
    else:
        encoder = _encoder(backend, batch_size, os.cpu_count() or 1, export_dir)
        encode, version = encoder.encode, encoder.version
    encode(texts[:batch_size])  # warm-up: first-call allocations and graph compilation
    start = time.perf_counter()
    vectors = encode(texts)
    seconds = time.perf_counter() - start
    return seconds, vectors, encode(probes) if probes else None, version


def encode_each(backends, texts, probes, batch_size, export_dir) -> dict[str, tuple]:
    """{backend: (mean encode seconds of the two passes, row vectors, probe vectors, version)}:
    each backend in a fresh process per pass, the second pass in reverse order."""
    seconds: dict[str, float] = {}
    outputs: dict[str, list] = {}
    for backend in [*backends, *reversed(backends)]:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            took, *rest = pool.submit(_encode_in_process, backend, texts, probes, batch_size, export_dir).result()
        print(f"  {backend}: {len(texts) / took:.1f} rows/s", flush=True)
        seconds[backend] = seconds.get(backend, 0.0) + took
        outputs.setdefault(backend, rest)
    return {backend: (seconds[backend] / 2, *outputs[backend]) for backend in backends}


def compare_backends(results: dict[str, tuple], threshold: float, flag_threshold: float) -> list[dict]:
    from platypus_ray.embedding.calibrate import compare

    _, ref, ref_probes, _ = results["torch"]
    bare_s = results[BARE][0]
    rows = []
    for name, (seconds, vectors, probes, version) in results.items():
        diff, kept, flags = compare(ref, vectors, threshold, flag_threshold, ref_probes, probes)
        rows.append(
            {
                "name": name,
                "version": version,
                "rows_per_s": round(len(ref) / seconds, 1),
                "ratio_vs_bare": round(bare_s / seconds, 2),
                "max_abs_cos_diff": diff,
                "kept_differs": kept,
                "flags_differ": flags,
            }
        )
    return rows


def _encode_share(backend: str, texts: list[str], threads: int, batch_size: int, export_dir: str | None, barrier):
    encoder = _encoder(backend, batch_size, threads, export_dir)
    encoder.encode(texts[:batch_size])  # warm-up, as for the other bare runs
    barrier.wait()
    start = time.time()
    encoder.encode(texts)
    return start, time.time()


def bare_in_layout(
    texts: list[str], backend: str, processes: int, threads: int, batch_size: int, export_dir: str | None
) -> float:
    """Rows/s of ``processes`` bare processes of ``threads`` threads each, encoding their share of
    the rows at the same time: the actor pool's layout without Ray."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        barrier = manager.Barrier(processes)
        futures = [
            pool.submit(_encode_share, backend, texts[i::processes], threads, batch_size, export_dir, barrier)
            for i in range(processes)
        ]
        spans = [future.result() for future in futures]
    return len(texts) / (max(end for _, end in spans) - min(start for start, _ in spans))


def pipeline_vs_bare(
    texts: list[str], backend: str, bare_rows_per_s: float, batch_size: int, actors: int, export_dir: str | None
) -> dict:
    """The refine embed stage with ``backend`` against the same backend used bare (steady state):
    ``actors`` actors of one CPU each, then one actor with every core. The first layout is also
    compared with bare processes in that layout (one thread each), which tells Ray's cost apart
    from the layout's."""
    from platypus_ray.bench.embed_stage import bench_pipeline_embed

    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"backend": backend, "bare_rows_per_s": bare_rows_per_s, "layouts": []}
    for layout_actors, cpus in dict.fromkeys([(actors, 1), (1, cores)]):
        profile, _ = bench_pipeline_embed(
            texts, batch_size, layout_actors, backend=backend, export_dir=export_dir, cpus_per_actor=cpus
        )
        steady = len(texts) / profile.steady_s
        layout = {
            "actors": layout_actors,
            "cpus_per_actor": cpus,
            "pipeline_rows_per_s": round(steady, 1),
            "ratio_steady": round(steady / bare_rows_per_s, 2),
            "pipeline_end_to_end_rows_per_s": round(len(texts) / profile.total_s, 1),
            "profile": profile.as_dict(),
        }
        if (layout_actors, cpus) != (1, cores):
            same = bare_in_layout(texts, backend, layout_actors, cpus, batch_size, export_dir)
            layout |= {
                "bare_same_layout_rows_per_s": round(same, 1),
                "ratio_vs_bare_same_layout": round(steady / same, 2),
            }
        out["layouts"].append(layout)
    return out


def run_backends(
    texts: list[str],
    batch_size: int,
    actors: int,
    threshold: float,
    json_path: Path | None,
    export_dir: str | None = None,
    backends=BACKENDS,
) -> dict:
    """The whole comparison; prints the table and writes ``json_path`` when given."""
    probes = mmlu_probes()
    load_before = os.getloadavg()
    print(f"backends  {len(texts)} rows, {len(probes)} MMLU probes, {os.cpu_count()} cores, batch {batch_size}")
    results = encode_each((BARE, *backends), texts, probes, batch_size, export_dir)
    table = compare_backends(results, threshold, threshold)
    exact = [
        r for r in table if r["name"] in ("torch", "onnx", "openvino") and r["kept_differs"] == r["flags_differ"] == 0
    ]
    best = max(exact, key=lambda r: r["rows_per_s"])
    pipeline = pipeline_vs_bare(texts, best["name"], best["rows_per_s"], batch_size, actors, export_dir)
    report = {
        "rows": len(texts),
        "probes": len(probes),
        "threshold": threshold,
        "cores": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "backends": table,
        "pipeline": pipeline,
    }
    print(
        f"  {'backend':10s} {'rows/s':>8s} {'x bare':>7s} {'max|dcos|':>10s} "
        f"{'kept_differs':>13s} {'flags_differ':>13s}"
    )
    for r in table:
        print(
            f"  {r['name']:10s} {r['rows_per_s']:8.1f} {r['ratio_vs_bare']:7.2f} {r['max_abs_cos_diff']:10.2e} "
            f"{r['kept_differs']:13d} {r['flags_differ']:13d}"
        )
    for layout in pipeline["layouts"]:
        print(
            f"  pipeline embed stage with {best['name']}, "
            f"{layout['actors']} actor(s) x {layout['cpus_per_actor']} CPU: "
            f"{layout['pipeline_rows_per_s']} rows/s steady vs {pipeline['bare_rows_per_s']} bare: "
            f"{layout['ratio_steady']}x (target >= 0.95x)"
        )
        p = layout["profile"]
        print(
            f"    actors busy {p['busy_share']:.1%} of the steady state, idle at the end up to {p['tail_s']:.1f} s; "
            f"CPU they got inside their calls: {p['cpu_share_in_calls']:.1%} of the CPUs they hold (the rest "
            "went to other processes)"
        )
        if "bare_same_layout_rows_per_s" in layout:
            print(
                f"    vs {layout['actors']} bare processes x {layout['cpus_per_actor']} thread at once: "
                f"{layout['bare_same_layout_rows_per_s']} rows/s: {layout['ratio_vs_bare_same_layout']}x"
            )
    print(f"  load average (1 min) before / after: {report['load_average_before_after']}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        print(f"  wrote {json_path}")
    return report
