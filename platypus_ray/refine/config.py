"""Refine stage config: sources, benchmarks, embedding, dedup, contamination, output."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from platypus_ray.core.config import StrictModel
from platypus_ray.embedding import EmbeddingConfig
from platypus_ray.testsets import BenchmarkConfig

SourceFormat = Literal["json", "jsonl", "parquet", "csv"]
SourceShape = Literal["auto", "alpaca", "messages", "sharegpt"]
Role = Literal["user", "assistant", "system"]
SOURCE_EXTENSIONS = ("json", "jsonl", "parquet", "csv")  # each also compressed: .gz, .bz2, .xz, .zst (paths.py)
ContaminationCategory = Literal["duplicate", "gray_area", "similar_but_different"]


def kept_folder(output: str) -> str:
    """The folder under a refine ``output`` that holds the kept rows (what train reads)."""
    return f"{output.rstrip('/')}/kept"


class ColumnMapping(StrictModel):
    """Which source column feeds each canonical field, and for conversations which turn keys and role names."""

    instruction: str = "instruction"
    input: str = "input"  # optional in the data: a row without it gets input ""
    output: str = "output"
    messages: str = Field("messages", description="the OpenAI-shape column: a list of {role, content} turns")
    conversations: str = Field("conversations", description="the ShareGPT-shape column: a list of {from, value} turns")
    role: str | None = Field(None, description="a turn's role key; default: role (messages), from (sharegpt)")
    content: str | None = Field(None, description="a turn's text key; default: content (messages), value (sharegpt)")
    roles: dict[str, Role] = Field(
        {}, description="source role name -> user | assistant | system, on top of the built-in names (human, gpt, ...)"
    )


class SourceConfig(StrictModel):
    """One instruction source: a file, a directory of files, or a glob; local or remote."""

    path: str
    name: str | None = Field(None, description="becomes data_source; defaults to the file or folder name")
    format: SourceFormat | None = Field(None, description="inferred from the file extension when omitted")
    shape: SourceShape = Field(
        "auto",
        description="the row shape (format stays the file format); auto: from a file's first records, messages "
        "for the `messages` column, sharegpt for `conversations`, alpaca for instruction + output (columns: names)",
    )
    columns: ColumnMapping = ColumnMapping()
    # JSON: read the list under this top-level key ({"train": [...]}), as the `datasets` JSON loader's `field`
    field: str | None = None

    @property
    def source_name(self) -> str:
        from platypus_ray.core.paths import default_name

        return self.name or default_name(self.path)


class DedupConfig(StrictModel):
    """Semantic dedup: remove a row that is >= threshold to a kept row of higher priority."""

    threshold: float = Field(0.8, gt=0.0, le=1.0)
    keep: Literal["longest_output", "first"] = "longest_output"  # first = input order (Platypus notebook)
    tile_size: int = Field(2048, ge=16, description="rows per similarity tile; memory per task ~ tile_size^2 * 4 B")
    # kept: each row against the rows kept before it (exact, rows x kept work; refine/dedup/kept_walk.py).
    # exact: all pairs (every pair for the report; all-pairs work). clustered: an exact partition (k-means and
    # ClusterJoin's bisector rule), or all pairs where that costs less. auto: kept within auto_exact_budget_s,
    # clustered past it.
    mode: Literal["auto", "kept", "exact", "clustered"] = "auto"
    # exact and clustered hold every pair found while they number at most max_pairs (24 B each in the
    # driver); past it each row keeps its best higher-priority neighbours only (memory rows x this, however
    # dense a template cluster), and a row with more, none of them kept, gets an exact check: decisions stay exact
    max_pairs: int = Field(
        16_000_000, ge=0, description="pairs held before each row keeps only its neighbours_per_row best"
    )
    neighbours_per_row: int = Field(
        32, ge=1, description="past max_pairs: best higher-priority neighbours kept per row"
    )
    # auto: the walk against the kept set while its projected GEMM time (measured rate x one node's CPUs) fits this
    auto_exact_budget_s: float = Field(
        60.0,
        ge=0.0,
        description="auto: the exact walk against the kept set while its projected time fits this, clustered past it",
    )
    rows_per_cluster: int = Field(1000, ge=16, description="clustered: k = rows / this")
    recall_sample: int = Field(5_000, ge=0, description="clustered: rows checked against an exact search on every run")
    timeout_s: float = Field(
        3600.0, gt=0, description="bound on the similarity tasks of one run: dedup and the contamination search"
    )


class ContaminationConfig(StrictModel):
    """Benchmark decontamination by embedding similarity and verbatim n-gram overlap."""

    threshold: float = Field(0.8, gt=0.0, le=1.0)  # flag a row whose best benchmark match is >= this
    ngram: int = Field(13, ge=3, description="words per verbatim n-gram (13 as in GPT-3)")
    gray_area_threshold: float = Field(0.9, gt=0.0, le=1.0)
    duplicate_threshold: float = Field(0.95, gt=0.0, le=1.0)
    duplicate_ngram_coverage: float = Field(0.5, gt=0.0, le=1.0)
    window_words: int = Field(64, ge=8, description="long benchmark items are also embedded as windows this long")
    remove: list[ContaminationCategory] = ["duplicate", "gray_area", "similar_but_different"]

    @model_validator(mode="after")
    def _ordered(self) -> ContaminationConfig:
        if not self.threshold <= self.gray_area_threshold <= self.duplicate_threshold:
            raise ValueError(
                "need threshold <= gray_area_threshold <= duplicate_threshold, got "
                f"{self.threshold} / {self.gray_area_threshold} / {self.duplicate_threshold}"
            )
        return self


class RefineConfig(StrictModel):
    """Root config of ``platypus-ray refine``."""

    sources: list[SourceConfig] = Field(min_length=1)
    benchmarks: list[BenchmarkConfig] = []
    embedding: EmbeddingConfig = EmbeddingConfig()
    dedup: DedupConfig = DedupConfig()
    contamination: ContaminationConfig = ContaminationConfig()
    output: str = "out/refine"
    # all: `first` calls different conversations that share an opener duplicates (bench/embed_turns.py)
    embed_turns: Literal["all", "first"] = Field(
        "all",
        description="a conversation's embedded text (what semantic dedup compares): all user turns, one per line, "
        "or the first only; an Alpaca row has one either way; contamination checks every user turn regardless",
    )
    allow_empty_benchmark: bool = False  # a benchmark with no items is an error unless this is set

    @property
    def kept_path(self) -> str:
        """Where the kept rows are written: what train reads (``RefineResult.kept_path`` once run)."""
        return kept_folder(self.output)

    @property
    def cache_location(self) -> str | None:
        """Where embeddings are cached, or None when ``embedding.cache`` is false."""
        from platypus_ray.embedding import default_cache_location as default_location

        if self.embedding.cache is False:
            return None
        return default_location(self.output) if self.embedding.cache is True else self.embedding.cache

    @model_validator(mode="after")
    def _unique_names(self) -> RefineConfig:
        for kind, names in (
            ("sources", [s.source_name for s in self.sources]),
            ("benchmarks", [b.benchmark_name for b in self.benchmarks]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique; set `name:` to tell apart {dupes}")
        return self
