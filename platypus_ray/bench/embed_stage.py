"""The embed stage measured: bare sentence-transformers ``encode`` (the baseline) and refine's
Ray Data actor-pool stage on the same rows, with a profile of where the stage's time goes.
Used by ``bench/refine.py`` (embed rows/s) and ``bench/backends.py`` (the pipeline layouts).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


def load_texts(path: Path, rows: int | None) -> list[str]:
    from platypus_ray.refine.rows import embed_text

    records = json.loads(path.read_text())
    texts = [embed_text(r["instruction"], r.get("input") or "") for r in records]
    return texts[:rows] if rows else texts


def _bare_encode(texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    """In a fresh process: import, load, encode with torch on every core (the baseline)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from platypus_ray.embedding.models import resolve_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    loaded = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return time.perf_counter() - loaded, vectors.astype(np.float32)


def bench_bare_encode(texts: list[str], batch_size: int) -> tuple[float, float, np.ndarray]:
    """(seconds from process start to vectors back, encode-only seconds, vectors): the same
    span the pipeline's embed step covers (worker start, imports, model load, encode)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        encode_s, vectors = pool.submit(_bare_encode, texts, batch_size).result()
    return time.perf_counter() - start, encode_s, vectors


@dataclass
class StageProfile:
    """Where the embed stage's actors spent the steady state (first batch starts -> last ends)."""

    total_s: float  # embed_texts from call to vectors back (sort, actor start, encode, collect)
    steady_s: float
    busy_share: float  # of actors x steady_s, inside a batch call
    cpu_share_in_calls: float  # CPU time the actors got inside their calls, per second and CPU they hold
    tail_s: float  # the longest an actor stood idle at the end, waiting for the others

    def as_dict(self) -> dict:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def bench_pipeline_embed(
    texts: list[str],
    batch_size: int,
    actors: int,
    backend: str = "torch",
    export_dir: str | None = None,
    cpus_per_actor: float = 1.0,
) -> tuple[StageProfile, np.ndarray]:
    """The refine stage's embed step (length sort, actor pool, collect) and its profile. Each
    actor appends its calls' wall and CPU times to a file (an actor to collect them would take
    CPU from the stage it measures). ``cpu_share_in_calls`` below 1 is CPU taken by other
    processes (Ray's own, on a small node); ``busy_share`` below 1 is actors waiting for a batch."""
    from platypus_ray.embedding import EmbeddingConfig

    cfg = EmbeddingConfig(
        batch_size=batch_size,
        actors=actors,
        device="cpu",
        backend=backend,
        export_dir=export_dir,
        cpus_per_actor=cpus_per_actor,
    )
    total, calls, vectors = run_profiled(texts, cfg)
    first, last = calls[:, 1].min(), calls[:, 2].max()
    busy = calls[:, 2] - calls[:, 1]
    pids = np.unique(calls[:, 0])
    profile = StageProfile(
        total,
        last - first,
        busy.sum() / (len(pids) * (last - first)),
        (calls[:, 4] - calls[:, 3]).sum() / (busy.sum() * cpus_per_actor),
        max(last - calls[calls[:, 0] == pid, 2].max() for pid in pids),
    )
    return profile, vectors


def run_profiled(texts: list[str], cfg) -> tuple[float, np.ndarray, np.ndarray]:
    """The embed stage on ``texts`` as one block, as refine reads a source file (many small blocks
    hid the one-actor pool this once had): (seconds from call to vectors back, one row per actor
    call: pid, wall start, wall end, cpu start, cpu end, rows; the vectors)."""
    import tempfile

    import ray

    from platypus_ray.embedding import embed

    ds = ray.data.from_items(
        [{"key": k, "text": t, "text_len": len(t)} for k, t in enumerate(texts)], override_num_blocks=1
    ).materialize()
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "calls.txt"
        start = time.perf_counter()
        vectors = embed(ds, len(texts), cfg, embedder=profiled_embedder(str(log))).blocks.to_matrix()
        total = time.perf_counter() - start
        return total, np.loadtxt(log, ndmin=2), vectors


def profiled_embedder(log: str):
    """The production Embedder, with each call's process id, wall and process CPU times and rows
    appended to ``log`` (a line per call)."""
    from platypus_ray.embedding import Embedder

    class ProfiledEmbedder(Embedder):
        def __call__(self, batch):
            began, cpu_began = time.time(), time.process_time()
            out = super().__call__(batch)
            with open(log, "a") as f:
                f.write(
                    f"{os.getpid()} {began:.6f} {time.time():.6f} {cpu_began:.6f} {time.process_time():.6f} "
                    f"{len(batch['text'])}\n"
                )
            return out

    return ProfiledEmbedder
