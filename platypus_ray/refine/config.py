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

    instruction: str = Field("instruction", description="the column read as the instruction (Alpaca rows)")
    input: str = Field(
        "input",
        description='the column read as the input (Alpaca rows); optional in the data: a row without it gets ""',
    )
    output: str = Field("output", description="the column read as the output (Alpaca rows)")
    messages: str = Field("messages", description="the OpenAI-shape column: a list of {role, content} turns")
    conversations: str = Field("conversations", description="the ShareGPT-shape column: a list of {from, value} turns")
    role: str | None = Field(None, description="a turn's role key; default: role (messages), from (sharegpt)")
    content: str | None = Field(None, description="a turn's text key; default: content (messages), value (sharegpt)")
    roles: dict[str, Role] = Field(
        {}, description="source role name -> user | assistant | system, on top of the built-in names (human, gpt, ...)"
    )


class SourceConfig(StrictModel):
    """One instruction source: a file, a directory of files, or a glob; local or remote."""

    path: str = Field(
        description="a file, folder or glob: local, s3://, gs://, https:// or hf://datasets/ORG/NAME/FILE; "
        ".gz, .bz2, .xz or .zst after the format's extension is decompressed as it streams"
    )
    name: str | None = Field(None, description="becomes data_source; defaults to the file or folder name")
    format: SourceFormat | None = Field(
        None, description="json (an array, or one object per line), jsonl, parquet or csv; default: from the extension"
    )
    shape: SourceShape = Field(
        "auto",
        description="the row shape (format stays the file format); auto: from a file's first records, messages "
        "for the `messages` column, sharegpt for `conversations`, alpaca for instruction + output (columns: names)",
    )
    columns: ColumnMapping = Field(
        ColumnMapping(), description="source column names, where they differ from the defaults"
    )
    field: str | None = Field(
        None,
        description='JSON: read the list under this top-level key ({"train": [...]}), as the datasets JSON loader\'s '
        "field",
    )

    @property
    def source_name(self) -> str:
        from platypus_ray.core.paths import default_name

        return self.name or default_name(self.path)


class DedupConfig(StrictModel):
    """Semantic dedup: remove a row that is >= threshold to a kept row of higher priority."""

    threshold: float = Field(0.8, gt=0.0, le=1.0, description="cosine at or above which a row duplicates a kept row")
    keep: Literal["longest_output", "first"] = Field(
        "longest_output",
        description="row priority: longest_output (a longer output first, ties by input order) or first (input "
        "order: the Platypus notebook's loop)",
    )
    tile_size: int = Field(2048, ge=16, description="rows per similarity tile; memory per task ~ tile_size^2 * 4 B")
    mode: Literal["auto", "kept", "exact", "clustered"] = Field(
        "auto",
        description="all exact (the kept set equals brute force). kept: each row against the rows kept before it "
        "(rows x kept work); exact: all pairs (every pair listed); clustered: an exact partition (k-means and "
        "ClusterJoin's bisector rule), or all pairs where that costs less; auto: kept while its projected time fits "
        "auto_exact_budget_s, clustered past it",
    )
    max_pairs: int = Field(
        16_000_000,
        ge=0,
        description="exact and clustered hold every pair found while there are at most this many (24 B each in the "
        "driver); past it each row keeps only its neighbours_per_row best",
    )
    kept_shards: int | None = Field(
        None,
        ge=0,
        description="the walk against the kept set (mode kept) with its kept rows on this many actors, spread over "
        "the nodes, each doing its share of the products; null: one a node when the cluster has more than one "
        "node with CPUs, else a single task; 0 or 1: a single task",
    )
    neighbours_per_row: int = Field(
        32,
        ge=1,
        description="past max_pairs: the best higher-priority neighbours each row keeps (memory rows x this); a row "
        "with more, none of them kept, gets an exact check, so decisions stay exact",
    )
    products: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="precision of the products of the walk against the kept set and of the certificate's search "
        "among kept rows, on CPU: bfloat16 runs faster where the CPU has bfloat16 dot products (AVX512-BF16, AMX), "
        "and every score within its error bound (~0.012) of the threshold is re-scored in float64, so decisions "
        "and counts are the same; auto: bfloat16 where measured >= 1.3x float32 on the node and there are >= "
        "50,000 rows",
    )
    auto_exact_budget_s: float = Field(
        60.0,
        ge=0.0,
        description="auto: the walk against the kept set while its projected similarity time (a GEMM rate measured "
        "on this machine x one node's CPUs) fits this or its work stays below the clustered search's sampled "
        "estimate, clustered past both",
    )
    rows_per_cluster: int = Field(1000, ge=16, description="clustered: k = rows / this")
    recall_sample: int = Field(5_000, ge=0, description="clustered: rows checked against an exact search on every run")
    timeout_s: float = Field(
        3600.0, gt=0, description="bound on the similarity tasks of one run: dedup and the contamination search"
    )


def _check_order(threshold: float, gray_area: float, duplicate: float) -> None:
    if not threshold <= gray_area <= duplicate:
        raise ValueError(
            f"need threshold <= gray_area_threshold <= duplicate_threshold, got {threshold} / {gray_area} / {duplicate}"
        )


class MultilingualSignal(StrictModel):
    """The second embedding signal: benchmark matches by a multilingual encoder, with its own thresholds
    (a translated test question scores lower than an English paraphrase does under MiniLM)."""

    enabled: bool = Field(
        True,
        description="false: off (only the default model's signal and the n-grams). Without the multilingual extra the "
        "signal is skipped with a warning",
    )
    model: Literal["use-multilingual"] = Field(
        "use-multilingual",
        description="the multilingual encoder (its own vectors; never compared with embedding.model's); needs the "
        "multilingual extra, without which the signal is skipped with a warning",
    )
    # Thresholds measured through refine itself (its probes and windows; python -m platypus_ray.bench.multilingual
    # --refine, docs/benchmarks/multilingual-refine.json): human Chinese translations of 409 GNOME help paragraphs
    # hidden among the 5,000 Alpaca rows, the English paragraphs and MMLU as the benchmarks.
    threshold: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description="flag a row whose best benchmark match has cosine >= this under the multilingual model; "
        "0.6: 95% of held-out Chinese translations of benchmark items found, 0.16% of the Alpaca sample flagged "
        "(0.58: 0.3%)",
    )
    gray_area_threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="gray_area under this signal: cosine >= this (80% of the translations; 1 Alpaca row of "
        "5,000); at most duplicate_threshold",
    )
    duplicate_threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="duplicate under this signal: cosine >= this (about a third of the translations; no Alpaca row)",
    )

    remove: list[ContaminationCategory] = Field(
        ["duplicate", "gray_area", "similar_but_different"],
        description="the categories this signal alone removes; a row it puts in another category is kept and stays "
        "flagged (ledger, review.csv). All three by default: a translation between 0.6 and 0.7 is as much a leak "
        "as one above (removing only gray_area and up found 80% of them), and at 0.6 the false flags are few",
    )

    @model_validator(mode="after")
    def _ordered(self) -> MultilingualSignal:
        _check_order(self.threshold, self.gray_area_threshold, self.duplicate_threshold)
        return self


class ContaminationConfig(StrictModel):
    """Benchmark decontamination by embedding similarity and verbatim n-gram overlap."""

    threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="flag a row whose best benchmark match has cosine >= this (similar_but_different when nothing "
        "else applies); at most gray_area_threshold",
    )
    ngram: int = Field(13, ge=3, description="words per verbatim n-gram (13 as in GPT-3)")
    gray_area_threshold: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="gray_area: cosine >= this, or any shared n-gram; at most duplicate_threshold",
    )
    duplicate_threshold: float = Field(0.95, gt=0.0, le=1.0, description="duplicate: cosine >= this")
    duplicate_ngram_coverage: float = Field(
        0.5, gt=0.0, le=1.0, description="duplicate also: the row holds this share of the item's distinct n-grams"
    )
    window_words: int = Field(64, ge=8, description="long benchmark items are also embedded as windows this long")
    remove: list[ContaminationCategory] = Field(
        ["duplicate", "gray_area", "similar_but_different"],
        description="the categories removed; a flagged row of another category is kept and stays flagged",
    )
    multilingual: MultilingualSignal | None = Field(
        MultilingualSignal(),
        description="the second embedding signal, on by default: the benchmarks matched by a multilingual encoder "
        "too, so a test question translated into another language is found; null (or enabled: false): off. "
        "Skipped when embedding.model is that encoder already (configured or routed; a routed run cuts the embedding "
        "signal's categories at this signal's thresholds)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ContaminationConfig:
        _check_order(self.threshold, self.gray_area_threshold, self.duplicate_threshold)
        return self

    @property
    def multilingual_on(self) -> bool:
        """Whether the multilingual signal is configured on (the run may still skip it)."""
        return self.multilingual is not None and self.multilingual.enabled


class RefineConfig(StrictModel):
    """Root config of ``platypus-ray refine``."""

    sources: list[SourceConfig] = Field(min_length=1, description="the instruction data, at least one source")
    benchmarks: list[BenchmarkConfig] = Field(
        [], description="test sets the rows are checked against (decontamination); none: no check"
    )
    embedding: EmbeddingConfig = Field(EmbeddingConfig(), description="the sentence-embedding model and its actors")
    dedup: DedupConfig = Field(DedupConfig(), description="semantic dedup of the rows")
    contamination: ContaminationConfig = Field(ContaminationConfig(), description="benchmark decontamination")
    output: str = Field(
        "out/refine",
        description="the folder refine writes (kept/, ledger/, review.csv, stats.json, report.html, config.yaml), "
        "replaced whole; local or on a shared filesystem",
    )
    embed_turns: Literal["all", "first"] = Field(
        "all",
        description="a conversation's embedded text (what semantic dedup compares): all user turns, one per line, "
        "or the first only (which calls different conversations that share an opener duplicates); an Alpaca row "
        "has one either way; contamination checks every user turn regardless",
    )
    allow_empty_benchmark: bool = Field(
        False, description="run on when a benchmark has no items (--allow-empty-benchmark); else an error"
    )

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
