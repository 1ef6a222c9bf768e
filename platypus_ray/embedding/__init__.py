"""The embedding engine: texts -> unit vectors in object-store blocks, used by refine, the benches and
anything else that embeds. It never imports a stage (``platypus_ray.refine`` and the others).

Inside: ``models`` (which model: offline resolution, the languages it reads), ``config``
(``EmbeddingConfig``), ``encoders`` (torch, ONNX Runtime, OpenVINO, int8, model2vec static, and
the numpy Universal Sentence Encoder of ``use-multilingual``),
``export`` / ``manifest`` / ``distill`` (exported and distilled models, checksummed),
``calibrate`` (the measured ``auto`` choice), ``cache`` (content-keyed Parquet vectors),
``pool`` (the Ray Data actor-pool stage) and ``vectors`` (object-store blocks of vectors).

From outside, import from here: :func:`embed` is the one entry (a dataset of ``key, text,
text_hash, text_len`` rows in, :class:`Embedded` out); the rest are the types and checks a
caller needs around it.
"""

from __future__ import annotations

from platypus_ray.embedding.cache import HASH_BYTES, hash_array
from platypus_ray.embedding.cache import default_location as default_cache_location
from platypus_ray.embedding.calibrate import report_html
from platypus_ray.embedding.config import EmbeddingBackend, EmbeddingConfig
from platypus_ray.embedding.models import (
    LANGUAGE_SCRIPTS,
    MULTILINGUAL,
    USE_LANGUAGES,
    USE_MULTILINGUAL,
    check_model,
    is_use,
    model_languages,
    resolve_model,
)
from platypus_ray.embedding.pool import TO_EMBED_SCHEMA, Embedded, Embedder, embed_texts, open_cache
from platypus_ray.embedding.vectors import EmbeddingBlocks

__all__ = [
    "HASH_BYTES",
    "LANGUAGE_SCRIPTS",
    "MULTILINGUAL",
    "TO_EMBED_SCHEMA",
    "USE_LANGUAGES",
    "USE_MULTILINGUAL",
    "Embedded",
    "Embedder",
    "EmbeddingBackend",
    "EmbeddingBlocks",
    "EmbeddingConfig",
    "check_model",
    "default_cache_location",
    "embed",
    "hash_array",
    "is_use",
    "model_languages",
    "report_html",
    "resolve_model",
]


def embed(
    ds,
    n: int,
    cfg: EmbeddingConfig,
    cache_location: str | None = None,
    thresholds: tuple[float, float] = (0.8, 0.8),
    timeout_s: float = 3600.0,
    embedder: type[Embedder] = Embedder,
) -> Embedded:
    """Unit vectors of ``ds``'s rows (keys 0..n-1) as object-store blocks: from the cache at
    ``cache_location`` where it has them, else from one actor pool of ``cfg``'s encoder.
    ``thresholds`` (dedup, contamination) are what the ``auto`` backend's calibration compares
    decisions at."""
    cache = open_cache(cache_location, cfg) if cache_location else None
    return embed_texts(ds, n, cfg, embedder=embedder, thresholds=thresholds, cache=cache, timeout_s=timeout_s)
