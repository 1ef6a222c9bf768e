"""Per-row decisions and the refine outputs: ``kept/``, ``ledger/`` (one row per input row), stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from platypus_ray.core.blocks import batches, read_columns, rows_only
from platypus_ray.core.coded import Coded
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


STATUS_NAMES = ("kept", "invalid", "removed")
KEPT, INVALID, REMOVED = range(3)
TOP_PAIRS = 20  # the near-duplicate pairs the report shows


@dataclass(frozen=True)
class Flag:
    """A contamination match: the benchmark item, its category and the signal that found it."""

    item_id: str
    benchmark: str
    category: str
    signal: str


@dataclass
class Decisions:
    """What happens to every input row, indexed by uid (the row's position in input order).

    Per row the driver holds only numbers (status, reason code, matched uid, score, source code:
    23 bytes); ids, details and texts stay in the parsed blocks and are joined in by the tasks that
    write the ledger. Contamination flags and details set here (few rows) are kept by uid."""

    source: Coded
    source_first: np.ndarray  # per source code: its first uid (0 for a source without rows)
    status: np.ndarray  # int8: KEPT, INVALID, REMOVED
    reason: np.ndarray  # int16 codes into ``reasons``
    reasons: list[str]
    matched_uid: np.ndarray
    score: np.ndarray
    flags: dict[int, Flag] = field(default_factory=dict)
    details: dict[int, str] = field(default_factory=dict)  # set on the driver, over the parsed row's own
    near_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None)
    near_pairs_total: int = 0

    @classmethod
    def start(cls, meta: dict) -> Decisions:
        """From the gathered ``source``, ``valid`` and ``reason`` columns (strings or :class:`Coded`)."""
        source, reason = Coded.of(meta["source"]), Coded.of(meta["reason"])
        n = len(meta["valid"])
        first = np.zeros(len(source.names), dtype=np.int64)
        present, at = np.unique(source.codes, return_index=True)
        first[present] = at
        return cls(
            source=source,
            source_first=first,
            status=np.where(np.asarray(meta["valid"], dtype=bool), KEPT, INVALID).astype(np.int8),
            reason=reason.codes.astype(np.int16),
            reasons=list(reason.names),
            matched_uid=np.full(n, -1, dtype=np.int64),
            score=np.full(n, np.nan),
        )

    def __len__(self) -> int:
        return len(self.status)

    def reason_code(self, name: str) -> int:
        """``name``'s code, added to the table when new."""
        if name not in self.reasons:
            self.reasons.append(name)
        return self.reasons.index(name)

    def has_reason(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        codes = self.reason if rows is None else self.reason[rows]
        return codes == (self.reasons.index(name) if name in self.reasons else -1)

    def source_index(self, uids: np.ndarray) -> np.ndarray:
        """Each row's position within its source (sources are contiguous in uid order)."""
        return uids - self.source_first[self.source.codes[uids]]

    def remove(self, uids: np.ndarray, reason: str, matched: np.ndarray, score) -> None:
        """Mark rows removed as duplicates of the rows ``matched`` (uids)."""
        require((self.status[uids] == KEPT).all(), "a row is removed at most once")
        self.status[uids] = REMOVED
        self.reason[uids] = self.reason_code(reason)
        self.matched_uid[uids] = matched
        self.score[uids] = score

    def flag(
        self, uid: int, remove: bool, item_id: str, benchmark: str, category: str, signal: str, score: float
    ) -> None:
        """Record a contamination flag; the row is removed unless its category is kept by config."""
        if remove:
            self.status[uid] = REMOVED
            self.reason[uid] = self.reason_code("contaminated")
        self.flags[int(uid)] = Flag(item_id, benchmark, category, signal)
        self.score[uid] = score

    def flagged(self) -> np.ndarray:
        """uids with a contamination flag, in uid order."""
        return np.array(sorted(self.flags), dtype=np.int64)

    def record_pairs(self, i: np.ndarray, j: np.ndarray, score: np.ndarray, total: int) -> None:
        """The highest-scoring pairs (for the report), and how many the search found."""
        top = np.argsort(-score, kind="stable")[:TOP_PAIRS]
        self.near_pairs = (i[top], j[top], score[top])
        self.near_pairs_total = total

    def matched_uids(self) -> np.ndarray:
        """Every row some removed row points at (whose id the ledger names), once each."""
        return np.unique(self.matched_uid[self.matched_uid >= 0])

    def columns(self, ids: IdLookup) -> LedgerColumns:
        """What the write tasks join with the parsed rows to build the ledger."""
        return LedgerColumns(
            status=self.status,
            reason=self.reason,
            reasons=tuple(self.reasons),
            matched_uid=self.matched_uid,
            score=self.score,
            source_code=self.source.codes,
            source_names=tuple(self.source.names),
            source_start=self.source_first,
            flags=self.flags,
            details=self.details,
            ids=ids,
        )


@dataclass(frozen=True)
class IdLookup:
    """The ids of some rows, by uid (sorted), as compact Arrow strings."""

    uids: np.ndarray
    ids: pa.Array

    @classmethod
    def empty(cls) -> IdLookup:
        return cls(np.empty(0, dtype=np.int64), pa.array([], type=pa.string()))

    def __call__(self, uids: np.ndarray) -> pa.Array:
        at = np.searchsorted(self.uids, uids)
        require(
            len(uids) == 0 or bool((self.uids[np.minimum(at, len(self.uids) - 1)] == uids).all()),
            "an id was looked up that was not fetched",
        )
        return self.ids.take(pa.array(at, type=pa.int64()))

    def get(self, uid: int) -> str:
        return str(self(np.array([uid], dtype=np.int64))[0].as_py())


@dataclass(frozen=True)
class LedgerColumns:
    """The decisions as the write tasks see them (numbers per row; flags, details and ids by uid)."""

    status: np.ndarray
    reason: np.ndarray
    reasons: tuple[str, ...]
    matched_uid: np.ndarray
    score: np.ndarray
    source_code: np.ndarray
    source_names: tuple[str, ...]
    source_start: np.ndarray
    flags: dict[int, Flag]
    details: dict[int, str]
    ids: IdLookup

    def rows(self, uid: np.ndarray, detail: list[str]) -> dict[str, Any]:
        """The ledger's decided columns for rows ``uid`` (whose parsed details are ``detail``)."""
        names = lambda table, codes: np.asarray(table, dtype=object)[codes].tolist() if len(codes) else []
        matched = self.matched_uid[uid]
        has_match = matched >= 0
        matched_code = self.source_code[np.maximum(matched, 0)]
        flags = [self.flags.get(int(u)) for u in uid] if self.flags else [None] * len(uid)
        matched_id = np.full(len(uid), "", dtype=object)
        matched_id[has_match] = self.ids(matched[has_match]).to_numpy(zero_copy_only=False)
        for k, flag in enumerate(flags):
            if flag is not None and not has_match[k]:
                matched_id[k] = flag.item_id
        return {
            "source_index": uid - self.source_start[self.source_code[uid]],
            "status": names(STATUS_NAMES, self.status[uid]),
            "reason": names(self.reasons, self.reason[uid]),
            "detail": [self.details.get(int(u), d) for u, d in zip(uid, detail)] if self.details else detail,
            "matched_id": matched_id.tolist(),
            "matched_source": np.where(
                has_match, np.asarray(self.source_names, dtype=object)[matched_code], ""
            ).tolist(),
            "matched_source_index": np.where(has_match, matched - self.source_start[matched_code], -1),
            "score": self.score[uid],
            "benchmark": [f.benchmark if f else "" for f in flags],
            "category": [f.category if f else "" for f in flags],
            "signal": [f.signal if f else "" for f in flags],
        }


def _uids(batch: pa.Table, file_offset: np.ndarray) -> np.ndarray:
    return file_offset[batch["file_rank"].to_numpy()] + batch["row_in_file"].to_numpy()


def _ledger_rows(batch: pa.Table, file_offset: np.ndarray, decided: LedgerColumns) -> pa.Table:
    columns = {"source": batch["source"], "file": batch["file"], "id": batch["id"]}
    columns.update(decided.rows(_uids(batch, file_offset), batch["detail"].to_pylist()))
    return pa.table([columns[name] for name in LEDGER_COLUMNS], schema=LEDGER_SCHEMA)


def _kept_rows(batch: pa.Table, file_offset: np.ndarray, status: np.ndarray, schema: pa.Schema) -> pa.Table:
    kept = batch.filter(pa.array(status[_uids(batch, file_offset)] == KEPT))
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


ID_SCHEMA = pa.schema([("uid", pa.int64()), ("id", pa.string())])


@rows_only(ID_SCHEMA)
def _id_rows(batch: pa.Table, file_offset: np.ndarray, wanted: np.ndarray) -> pa.Table:
    uid = _uids(batch, file_offset)
    mask = np.isin(uid, wanted)
    return pa.table([uid[mask], batch["id"].filter(pa.array(mask))], schema=ID_SCHEMA)


def fetch_ids(parsed: ray.data.Dataset, file_offset: np.ndarray, uids: np.ndarray) -> IdLookup:
    """The ids of rows ``uids``, read by one pass of tasks over the parsed blocks."""
    wanted = np.unique(uids)
    if len(wanted) == 0:
        return IdLookup.empty()
    table = read_columns(
        parsed.map_batches(_id_rows, fn_kwargs={"file_offset": file_offset, "wanted": wanted}, batch_format="pyarrow"),
        ["uid", "id"],
        ID_SCHEMA,
    )
    order = np.argsort(table["uid"].to_numpy(), kind="stable")
    found = IdLookup(table["uid"].to_numpy()[order], table["id"].combine_chunks().take(pa.array(order)))
    require(np.array_equal(found.uids, wanted), "every wanted row's id is found once")
    return found


WRITTEN_SCHEMA = pa.schema([("error", pa.string())])


def write_rows(
    staging: Path,
    parsed: ray.data.Dataset,
    file_offset: np.ndarray,
    decided: LedgerColumns,
    conversations: bool = False,
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
            "decided": ray.put(decided),  # once in the object store, not inside every task's function (N-sized)
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
    decided: LedgerColumns | ray.ObjectRef,
    kept_schema: pa.Schema = KEPT_SCHEMA,
) -> pa.Table:
    columns: LedgerColumns = ray.get(decided) if isinstance(decided, ray.ObjectRef) else decided
    name = f"part-{int(_uids(batch, file_offset).min()):012d}.parquet"
    kept = _kept_rows(batch, file_offset, columns.status, kept_schema)
    try:
        if kept.num_rows:
            pq.write_table(kept, f"{staging}/kept/{name}")
        pq.write_table(_ledger_rows(batch, file_offset, columns), f"{staging}/ledger/{name}")
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
    status, source = decisions.status, decisions.source
    per_source = {}
    codes = {name: code for code, name in enumerate(source.names)}
    for name in dict.fromkeys([*source_names, *(source.names[c] for c in source.in_order_of_appearance())]):
        mine = source.codes == codes.get(name, -1)
        per_source[name] = {
            "rows": int(mine.sum()),
            "kept": int((mine & (status == KEPT)).sum()),
            "invalid": int((mine & (status == INVALID)).sum()),
            "removed": _reason_counts(decisions, mine & (status == REMOVED)),
        }
    contamination: dict[str, dict[str, int]] = {}
    for uid in decisions.flagged():
        flag = decisions.flags[int(uid)]
        entry = contamination.setdefault(flag.benchmark, {"flagged": 0, "removed": 0})
        entry["flagged"] += 1
        entry["removed"] += int(status[uid] == REMOVED)
        entry[flag.category] = entry.get(flag.category, 0) + 1
    stats: dict[str, Any] = {
        "input_rows": len(status),
        "kept": int((status == KEPT).sum()),
        "invalid": int((status == INVALID).sum()),
        "removed": _reason_counts(decisions, status == REMOVED),
        "invalid_reasons": _reason_counts(decisions, status == INVALID),
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


def _reason_counts(decisions: Decisions, rows: np.ndarray) -> dict[str, int]:
    """Rows per reason among ``rows`` (a mask), by each reason's first row in uid order."""
    uids = np.flatnonzero(rows)
    codes, first, counts = np.unique(decisions.reason[uids], return_index=True, return_counts=True)
    return {decisions.reasons[codes[k]]: int(counts[k]) for k in np.argsort(first, kind="stable")}
