"""GPU-kit steps on refine's engines: the Ray Data embed stage on CUDA, and exact dedup on GPU tiles.

embed: the refine embed stage (actor pool, ``device: cuda``, torch backend) on the carried Alpaca
rows and MMLU probes in float32, float16 and bfloat16; rows/s in steady state (first call starts
-> last call ends, from each call's log) and end to end, against bare sentence-transformers
``encode`` in float32 on the same GPU (the baseline, measured in the same run). Decisions of
fp16/bf16 against fp32: greedy dedup at 0.8 in input order and contamination flags (best probe
>= 0.8), in float64 (``kept_differs``, ``flags_differ``, max |cosine diff|).

tiles: refine's exact dedup (``dedup_rows``, mode exact, similarity tiles as Ray tasks holding a
quarter GPU each) of generated unit vectors with planted near-duplicates around the threshold;
then, for a row sample, every cosine to every row re-scored in float64 on the CPU and the greedy
rule re-applied: ``decisions_differ`` must be 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from platypus_ray.bench.gpu_env import StepSettings, local_ray

PRECISIONS = ("float32", "float16", "bfloat16")
THRESHOLD = 0.8


def carried_texts(s: StepSettings) -> tuple[list[str], list[str]]:
    from platypus_ray.bench.backends import mmlu_probes
    from platypus_ray.bench.embed_stage import load_texts

    data = Path(s.data)
    rows = load_texts(data / "alpaca_5000.json", 48 if s.dry_run else None)
    # the bundle carries data/mmlu; the shared checkout a dry run reads has data/benchmarks/mmlu
    probes = mmlu_probes(data / "mmlu" if (data / "mmlu").is_dir() else data / "benchmarks" / "mmlu")
    if not rows or not probes:
        raise FileNotFoundError(f"{data}: no Alpaca rows or no MMLU probes; the embed step compares decisions on both")
    return rows, probes[:24] if s.dry_run else probes


def _stage_embed(texts: list[str], model: str, precision: str, device: str, batch_size: int) -> tuple[dict, np.ndarray]:
    """The refine embed stage on ``texts`` (one block, as refine reads a file), profiled per call."""
    from platypus_ray.bench.embed_stage import run_profiled
    from platypus_ray.embedding import EmbeddingConfig

    cfg = EmbeddingConfig(
        model=model, batch_size=batch_size, actors=1, device=device, backend="torch", precision=precision, cache=False
    )
    total, calls, vectors = run_profiled(texts, cfg)
    steady = calls[:, 2].max() - calls[:, 1].min()
    return {
        "stage_rows_per_s_steady": round(len(texts) / steady, 1),
        "stage_rows_per_s_end_to_end": round(len(texts) / total, 1),
        "stage_s": round(total, 2),
    }, vectors


def _bare_encode(texts: list[str], model: str, device: str) -> float:
    """Rows/s of sentence-transformers ``encode`` (fp32, its default batch size) after a warm-up."""
    import torch
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model, device=device)
    encoder.encode(texts[:64], normalize_embeddings=True)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return len(texts) / (time.perf_counter() - start)


def embed_step(s: StepSettings) -> dict:
    from platypus_ray.embedding.calibrate import compare
    from platypus_ray.embedding.models import resolve_model

    rows, probes = carried_texts(s)
    model = s.minilm or resolve_model("all-MiniLM-L6-v2")
    if s.minilm:
        from platypus_ray.bench.gpu_minilm import check_tokens

        check_tokens(Path(s.minilm), rows + probes)
    texts = rows + probes
    out: dict = {
        "rows": len(rows),
        "probes": len(probes),
        "device": s.device,
        "model": Path(model).name,
        "weights": "fp16-stored, upcast (see manifest storage_check)" if s.minilm else "fp32 original",
    }
    bare = _bare_encode(texts, model, s.device)
    out["bare_encode_fp32_rows_per_s"] = round(bare, 1)
    batch_size = 32 if s.dry_run else 512
    with local_ray(0 if s.dry_run else 1):
        runs = {p: _stage_embed(texts, model, p, s.device, batch_size) for p in PRECISIONS}
    ref = runs["float32"][1]
    for precision, (numbers, vectors) in runs.items():
        numbers["ratio_steady_vs_bare_fp32"] = round(numbers["stage_rows_per_s_steady"] / bare, 2)
        if precision != "float32":
            diff, kept, flags = compare(
                ref[: len(rows)], vectors[: len(rows)], THRESHOLD, THRESHOLD, ref[len(rows) :], vectors[len(rows) :]
            )
            numbers |= {"max_abs_cos_diff": diff, "kept_differs": kept, "flags_differ": flags}
        out[precision] = numbers
    return out


def planted_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors: random directions, and 2% of rows copies of another row with noise that puts
    their cosine between about 0.75 and 0.95 (pairs on both sides of the 0.8 threshold)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    copies = rng.choice(n, size=n // 50, replace=False)
    sources = rng.integers(0, n, size=len(copies))
    noise = rng.standard_normal((len(copies), dim), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angle = np.arccos(rng.uniform(0.75, 0.95, size=len(copies))).astype(np.float32)[:, None]
    vectors[copies] = np.cos(angle) * vectors[sources] + np.sin(angle) * noise  # ~unit: noise ~orthogonal
    vectors[copies] /= np.linalg.norm(vectors[copies], axis=1, keepdims=True)
    return vectors


def float64_decisions_differ(vectors: np.ndarray, keep: np.ndarray, sample: np.ndarray, chunk: int = 65536) -> int:
    """Sampled rows whose decision (keep: input order) differs from the greedy rule re-scored in
    float64 on the CPU: a row is removed iff an earlier kept row has cosine >= the threshold."""
    queries = vectors[sample].astype(np.float64)
    removed = np.zeros(len(sample), dtype=bool)
    for start in range(0, len(vectors), chunk):
        block = vectors[start : start + chunk].astype(np.float64)
        sims = queries @ block.T
        rows = np.arange(start, start + len(block))
        earlier_kept = (rows[None, :] < sample[:, None]) & keep[rows][None, :]
        removed |= ((sims >= THRESHOLD) & earlier_kept).any(axis=1)
    return int((removed == keep[sample]).sum())


def tiles_step(s: StepSettings) -> dict:
    from platypus_ray.refine.config import DedupConfig
    from platypus_ray.refine.dedup.pair_search import dedup_rows

    n, tile, sample_rows = (4000, 512, 300) if s.dry_run else (1_000_000, 8192, 2000)
    started = time.perf_counter()
    vectors = planted_vectors(n, 384)
    generated_s = time.perf_counter() - started
    cfg = DedupConfig(threshold=THRESHOLD, keep="first", mode="exact", tile_size=tile, timeout_s=600)
    with local_ray(0 if s.dry_run else 1):
        start = time.perf_counter()
        outcome = dedup_rows(vectors, np.zeros(n), cfg, num_gpus=0 if s.dry_run else 0.25)
        seconds = time.perf_counter() - start
    keep = outcome.decision.keep
    sample = np.sort(np.random.default_rng(1).choice(n, size=sample_rows, replace=False))
    check = time.perf_counter()
    differ = float64_decisions_differ(vectors, keep, sample)
    return {
        "rows": n,
        "dim": 384,
        "tile": tile,
        "gpus_per_task": 0 if s.dry_run else 0.25,
        "dedup_s": round(seconds, 2),
        "generate_s": round(generated_s, 2),
        "pairs_found": outcome.pairs.count,
        "removed": int((~keep).sum()),
        "float64_sample_rows": sample_rows,
        "sample_removed": int((~keep[sample]).sum()),
        "decisions_differ": differ,
        "float64_check_s": round(time.perf_counter() - check, 2),
    }
