"""Per-row decisions and the refine outputs: ``kept/``, ``ledger/`` (one row per input row), stats."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from platypus_ray.core.blocks import batches, read_columns, rows_only
from platypus_ray.core.conversation import MESSAGES, MESSAGES_TYPE
from platypus_ray.core.errors import EnvironmentFailure, describe_os_error, require
from platypus_ray.refine.rows import CANONICAL_COLUMNS, row_text

LEDGER_SCHEMA = pa.schema(
    [
        (name, pa.int64() if name.endswith("source_index") else pa.float64() if name == "score" else pa.string())
        for name in (
            "source",
            "file",
            "source_index",
            "id",
            "status",
            "reason",
            "detail",
            "matched_id",
            "matched_source",
            "matched_source_index",
            "score",
            "benchmark",
            "category",
            "signal",
        )
    ]
)
LEDGER_COLUMNS = LEDGER_SCHEMA.names
DECIDED_SCHEMA = pa.schema([f for f in LEDGER_SCHEMA if f.name not in ("source", "file", "id")])
KEPT_SCHEMA = pa.schema([(name, pa.string()) for name in CANONICAL_COLUMNS])
# a run with conversation rows adds their messages (core/conversation.py); Alpaca rows hold null there
KEPT_CHAT_SCHEMA = KEPT_SCHEMA.append(pa.field(MESSAGES, MESSAGES_TYPE))
TEXT_SCHEMA = pa.schema([("uid", pa.int64()), ("text", pa.string())])


@dataclass
class Decisions:
    """What happens to every input row, indexed by uid (the row's position in input order)."""

    ids: np.ndarray
    sources: np.ndarray
    source_index: np.ndarray
    status: np.ndarray
    reason: np.ndarray
    detail: np.ndarray
    matched_uid: np.ndarray
    matched_id: np.ndarray
    score: np.ndarray
    benchmark: np.ndarray
    category: np.ndarray
    signal: np.ndarray
    near_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None)
    near_pairs_total: int = 0

    @classmethod
    def start(cls, meta: dict[str, np.ndarray]) -> Decisions:
        n = len(meta["valid"])
        sources = meta["source"].astype(object)
        first_of_source: dict[str, int] = {}
        for uid, name in enumerate(sources):
            first_of_source.setdefault(name, uid)
        start = np.array([first_of_source[name] for name in sources], dtype=np.int64)
        blank = lambda: np.full(n, "", dtype=object)
        return cls(
            ids=meta["id"].astype(object),
            sources=sources,
            source_index=np.arange(n, dtype=np.int64) - start,
            status=np.where(meta["valid"], "kept", "invalid").astype(object),
            reason=meta["reason"].astype(object),
            detail=meta["detail"].astype(object),
            matched_uid=np.full(n, -1, dtype=np.int64),
            matched_id=blank(),
            score=np.full(n, np.nan),
            benchmark=blank(),
            category=blank(),
            signal=blank(),
        )

    def remove(self, uids: np.ndarray, reason: str, matched: np.ndarray, score) -> None:
        """Mark rows removed as duplicates of the rows ``matched`` (uids)."""
        require((self.status[uids] == "kept").all(), "a row is removed at most once")
        self.status[uids] = "removed"
        self.reason[uids] = reason
        self.matched_uid[uids] = matched
        self.matched_id[uids] = self.ids[matched]
        self.score[uids] = score

    def flag(
        self, uid: int, remove: bool, item_id: str, benchmark: str, category: str, signal: str, score: float
    ) -> None:
        """Record a contamination flag; the row is removed unless its category is kept by config."""
        if remove:
            self.status[uid] = "removed"
            self.reason[uid] = "contaminated"
        self.matched_id[uid] = item_id
        self.score[uid] = score
        self.benchmark[uid] = benchmark
        self.category[uid] = category
        self.signal[uid] = signal

    def record_pairs(self, i: np.ndarray, j: np.ndarray, score: np.ndarray, total: int) -> None:
        """The pairs kept for the report, and how many the search found (more, when bounded per row)."""
        self.near_pairs = (i, j, score)
        self.near_pairs_total = total

    def table(self) -> pa.Table:
        """The ledger columns that do not come from the parsed rows, indexed by uid."""
        matched = np.maximum(self.matched_uid, 0)
        has_match = self.matched_uid >= 0
        columns = {
            "source_index": self.source_index,
            "status": self.status.tolist(),
            "reason": self.reason.tolist(),
            "detail": self.detail.tolist(),
            "matched_id": self.matched_id.tolist(),
            "matched_source": np.where(has_match, self.sources[matched], "").tolist(),
            "matched_source_index": np.where(has_match, self.source_index[matched], -1),
            "score": self.score,
            "benchmark": self.benchmark.tolist(),
            "category": self.category.tolist(),
            "signal": self.signal.tolist(),
        }
        return pa.table([columns[f.name] for f in DECIDED_SCHEMA], schema=DECIDED_SCHEMA)


def _uids(batch: pa.Table, file_offset: np.ndarray) -> np.ndarray:
    return file_offset[batch["file_rank"].to_numpy()] + batch["row_in_file"].to_numpy()


def _ledger_rows(batch: pa.Table, file_offset: np.ndarray, decided: pa.Table) -> pa.Table:
    picked = decided.take(pa.array(_uids(batch, file_offset)))
    columns = {"source": batch["source"], "file": batch["file"], "id": batch["id"]}
    columns.update({name: picked[name] for name in picked.column_names})
    return pa.table([columns[name] for name in LEDGER_COLUMNS], schema=LEDGER_SCHEMA)


def _kept_rows(batch: pa.Table, file_offset: np.ndarray, keep: np.ndarray, schema: pa.Schema) -> pa.Table:
    kept = batch.filter(pa.array(keep[_uids(batch, file_offset)]))
    columns = [kept["id"], kept["instruction"], kept["input"], kept["output"], kept["source"]]
    return pa.table(columns + [kept[MESSAGES]] if MESSAGES in schema.names else columns, schema=schema)


@rows_only(TEXT_SCHEMA)
def _text_rows(batch: pa.Table, file_offset: np.ndarray, wanted: np.ndarray, embed_turns: str = "all") -> pa.Table:
    uid = _uids(batch, file_offset)
    mask = np.isin(uid, wanted)
    rows = batch.filter(pa.array(mask))
    texts = [
        row_text(i, x, m, embed_turns)
        for i, x, m in zip(rows["instruction"].to_pylist(), rows["input"].to_pylist(), rows[MESSAGES].to_pylist())
    ]
    return pa.table([uid[mask], texts], schema=TEXT_SCHEMA)


def fetch_texts(
    parsed: ray.data.Dataset, file_offset: np.ndarray, uids: np.ndarray, embed_turns: str = "all"
) -> dict[int, str]:
    """Embedded text (instruction [+ input]; a conversation's user turns) of a few rows, for review and the report."""
    if len(uids) == 0:
        return {}
    found = parsed.map_batches(
        _text_rows,
        fn_kwargs={"file_offset": file_offset, "wanted": np.unique(uids), "embed_turns": embed_turns},
        batch_format="pyarrow",
    )
    out: dict[int, str] = {}
    for batch in batches(found, "pyarrow"):
        out.update(zip(batch["uid"].to_pylist(), batch["text"].to_pylist()))
    return out


WRITTEN_SCHEMA = pa.schema([("error", pa.string())])


def write_rows(
    staging: Path, parsed: ray.data.Dataset, file_offset: np.ndarray, decisions: Decisions, conversations: bool = False
) -> None:
    """Write ``kept/`` (canonical schema, input order; plus ``messages`` when
    ``conversations``: some valid row is one) and ``ledger/`` (every input row) as Parquet,
    one part of each per block of ``parsed``, named by the block's first row so that file order is
    input order. A write that fails (a full disk) comes back as a value, not a task traceback, and
    is raised here as one :class:`EnvironmentFailure`."""
    for folder in ("kept", "ledger"):
        (staging / folder).mkdir()
    written = parsed.map_batches(
        _write_block,
        fn_kwargs={
            "staging": str(staging),
            "file_offset": file_offset,
            "keep": decisions.status == "kept",
            "decided": decisions.table(),
            "kept_schema": KEPT_CHAT_SCHEMA if conversations else KEPT_SCHEMA,
        },
        batch_size=None,
        batch_format="pyarrow",
    )
    problems = [e for e in read_columns(written, ["error"], WRITTEN_SCHEMA)["error"].to_pylist() if e]
    if problems:
        raise EnvironmentFailure(
            f"writing the output: {problems[0]}"
            + (f" (and {len(problems) - 1} more parts)" if len(problems) > 1 else "")
        )
    for folder, schema in (("kept", KEPT_CHAT_SCHEMA if conversations else KEPT_SCHEMA), ("ledger", LEDGER_SCHEMA)):
        if not any((staging / folder).glob("*.parquet")):  # readers of an empty output still need the schema
            pq.write_table(schema.empty_table(), staging / folder / "empty.parquet")


@rows_only(WRITTEN_SCHEMA)
def _write_block(
    batch: pa.Table,
    staging: str,
    file_offset: np.ndarray,
    keep: np.ndarray,
    decided: pa.Table,
    kept_schema: pa.Schema = KEPT_SCHEMA,
) -> pa.Table:
    name = f"part-{int(_uids(batch, file_offset).min()):012d}.parquet"
    kept = _kept_rows(batch, file_offset, keep, kept_schema)
    try:
        if kept.num_rows:
            pq.write_table(kept, f"{staging}/kept/{name}")
        pq.write_table(_ledger_rows(batch, file_offset, decided), f"{staging}/ledger/{name}")
    except OSError as exc:
        return pa.table(
            {"error": [describe_os_error(exc, f"{staging}/{name}") or f"{exc} ({staging})"]}, schema=WRITTEN_SCHEMA
        )
    return pa.table({"error": [""]}, schema=WRITTEN_SCHEMA)


def summarize(
    decisions: Decisions,
    embedded_rows: int,
    embed_seconds: float,
    n_items: dict[str, int],
    source_names: list[str],
    warnings: list[str],
) -> dict:
    """Counts per source and reason; they reconcile with the ledger by construction and by check.

    ``source_names``: every source the run read, so one with 0 rows (an empty, blank-only or
    header-only file) is counted, and named in a warning, rather than missing."""
    status, reason, sources = decisions.status, decisions.reason, decisions.sources
    per_source = {}
    for name in dict.fromkeys([*source_names, *sources.tolist()]):
        mine = sources == name
        per_source[name] = {
            "rows": int(mine.sum()),
            "kept": int((mine & (status == "kept")).sum()),
            "invalid": int((mine & (status == "invalid")).sum()),
            "removed": dict(Counter(reason[mine & (status == "removed")].tolist())),
        }
    flagged = decisions.category != ""
    contamination: dict[str, dict[str, int]] = {}
    for bench, category, st in zip(decisions.benchmark[flagged], decisions.category[flagged], status[flagged]):
        entry = contamination.setdefault(bench, {"flagged": 0, "removed": 0})
        entry["flagged"] += 1
        entry["removed"] += int(st == "removed")
        entry[category] = entry.get(category, 0) + 1
    stats: dict[str, Any] = {
        "input_rows": len(status),
        "kept": int((status == "kept").sum()),
        "invalid": int((status == "invalid").sum()),
        "removed": dict(Counter(reason[status == "removed"].tolist())),
        "invalid_reasons": dict(Counter(reason[status == "invalid"].tolist())),
        "per_source": per_source,
        "warnings": [f"source '{name}': 0 rows" for name, s in per_source.items() if s["rows"] == 0] + warnings,
        "benchmark_items": n_items,
        "contamination": contamination,
        "near_duplicate_pairs": 0 if decisions.near_pairs is None else int(decisions.near_pairs_total),
        "embedded_rows": int(embedded_rows),
        "embed_rows_per_s": round(embedded_rows / embed_seconds, 1) if embed_seconds > 0 else None,
    }
    accounted = stats["kept"] + stats["invalid"] + sum(stats["removed"].values())
    require(
        accounted == stats["input_rows"],
        f"ledger does not reconcile: kept + invalid + removed = {accounted}, input rows = {stats['input_rows']}",
    )
    return stats
