"""Per-row decisions and the refine outputs: ``kept/``, ``ledger/`` (one row per input row), stats."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
from platypus_ray.core.waits import wait_all
from platypus_ray.refine.input_rows import ID_SCHEMA, INVALID, KEPT, REMOVED, Counts, InputBlocks
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


STATUS_NAMES = ("kept", "invalid", "removed")  # by status code (input_rows.KEPT, INVALID, REMOVED)
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
    """What happens to the rows the driver decides on (in a run: the survivors of exact dedup), by
    position; ``uids`` names each position's row (sorted; None: position i is uid i). The other rows'
    fates stay in their blocks (:mod:`.input_rows`) and reach the stats as counts.

    Per row the driver holds only numbers (status, reason code, matched uid, score, source code:
    23 bytes, and the uid); ids, details and texts stay in the parsed blocks and are joined in by
    the tasks that write the ledger. Contamination flags and details set here (few rows) are kept by uid."""

    source: Coded
    source_first: np.ndarray  # per source code: its first uid (-1 for a source without rows)
    status: np.ndarray  # int8: KEPT, INVALID, REMOVED
    reason: np.ndarray  # int16 codes into ``reasons``
    reasons: list[str]
    matched_uid: np.ndarray
    score: np.ndarray
    uids: np.ndarray | None = None
    flags: dict[int, Flag] = field(default_factory=dict)
    details: dict[int, str] = field(default_factory=dict)  # set on the driver, over the parsed row's own
    near_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None)
    near_pairs_total: int = 0

    @classmethod
    def start(cls, meta: dict) -> Decisions:
        """Every row, from the ``source``, ``valid`` and ``reason`` columns (strings or :class:`Coded`)."""
        source, reason = Coded.of(meta["source"]), Coded.of(meta["reason"])
        n = len(meta["valid"])
        first = np.full(len(source.names), -1, dtype=np.int64)
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

    @classmethod
    def of_rows(cls, uids: np.ndarray, source: Coded, source_first: np.ndarray) -> Decisions:
        """Valid rows ``uids`` (sorted), all kept so far, with their sources."""
        n = len(uids)
        return cls(
            source=source,
            source_first=source_first,
            status=np.full(n, KEPT, dtype=np.int8),
            reason=np.zeros(n, dtype=np.int16),
            reasons=[""],
            matched_uid=np.full(n, -1, dtype=np.int64),
            score=np.full(n, np.nan),
            uids=np.asarray(uids, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.status)

    def at(self, uids) -> np.ndarray:
        """The positions of rows ``uids`` (each must be one of the decided rows)."""
        uids = np.asarray(uids, dtype=np.int64)
        if self.uids is None:
            return uids
        at = np.searchsorted(self.uids, uids)
        require(
            len(uids) == 0 or bool((self.uids[np.minimum(at, len(self.uids) - 1)] == uids).all()),
            "a row was looked up that the driver does not decide on",
        )
        return at

    def uid_at(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(positions, dtype=np.int64) if self.uids is None else self.uids[positions]

    def reason_code(self, name: str) -> int:
        """``name``'s code, added to the table when new."""
        if name not in self.reasons:
            self.reasons.append(name)
        return self.reasons.index(name)

    def has_reason(self, name: str) -> np.ndarray:
        """Per position: the row's reason is ``name``."""
        return self.reason == (self.reasons.index(name) if name in self.reasons else -1)

    def source_of(self, uids: np.ndarray) -> np.ndarray:
        """Each row's source code (any input row: sources are contiguous in uid order)."""
        return source_of(np.asarray(uids, dtype=np.int64), self.source_first)

    def source_name(self, uid: int) -> str:
        return self.source.names[int(self.source_of(np.array([uid]))[0])]

    def source_index(self, uids: np.ndarray) -> np.ndarray:
        """Each row's position within its source."""
        return uids - self.source_first[self.source_of(uids)]

    def score_of(self, uids) -> np.ndarray:
        return self.score[self.at(uids)]

    def matched_of(self, uids) -> np.ndarray:
        return self.matched_uid[self.at(uids)]

    def status_of(self, uid: int) -> int:
        return int(self.status[self.at(np.array([uid]))[0]])

    def remove(self, uids: np.ndarray, reason: str, matched: np.ndarray, score) -> None:
        """Mark rows removed as duplicates of the rows ``matched`` (uids)."""
        self.remove_at(self.at(uids), reason, matched, score)

    def remove_at(self, at: np.ndarray, reason: str, matched: np.ndarray, score) -> None:
        """:meth:`remove` for the rows at positions ``at``."""
        require((self.status[at] == KEPT).all(), "a row is removed at most once")
        self.status[at] = REMOVED
        self.reason[at] = self.reason_code(reason)
        self.matched_uid[at] = matched
        self.score[at] = score

    def flag(
        self, uid: int, remove: bool, item_id: str, benchmark: str, category: str, signal: str, score: float
    ) -> None:
        """Record a contamination flag; the row is removed unless its category is kept by config."""
        at = self.at(np.array([uid]))[0]
        if remove:
            self.status[at] = REMOVED
            self.reason[at] = self.reason_code("contaminated")
        self.flags[int(uid)] = Flag(item_id, benchmark, category, signal)
        self.score[at] = score

    def flagged(self) -> np.ndarray:
        """uids with a contamination flag, in uid order."""
        return np.array(sorted(self.flags), dtype=np.int64)

    def record_pairs(self, i: np.ndarray, j: np.ndarray, score: np.ndarray, total: int) -> None:
        """The highest-scoring pairs (for the report), and how many the search found."""
        top = top_scores(score, TOP_PAIRS)
        self.near_pairs = (i[top], j[top], score[top])
        self.near_pairs_total = total

    def matched_uids(self) -> np.ndarray:
        """Every row some removed row points at (whose id the ledger names), once each: unique per
        slice first, so the transient is a slice, not a sorted copy of every survivor's match."""
        step = 1 << 16
        parts = [np.unique(m[m >= 0]) for m in (self.matched_uid[s : s + step] for s in range(0, len(self), step))]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def counts(self) -> Counts:
        """Rows per (source, status, reason), with each group's first uid."""
        counts = Counts()
        counts.add_rows(self.source.codes, self.status, self.reason, self.reasons, self.uid_at(np.arange(len(self))))
        return counts

    def columns(self, ids: IdLookup) -> LedgerColumns:
        """What the write tasks join with the parsed rows to build the ledger."""
        return LedgerColumns(
            status=self.status,
            reason=self.reason,
            reasons=tuple(self.reasons),
            matched_uid=self.matched_uid,
            score=self.score,
            source_names=tuple(self.source.names),
            source_first=self.source_first,
            flags=self.flags,
            details=self.details,
            ids=ids,
        )


def top_scores(score: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, highest first, ties in position order: a stable
    ``argsort(-score)[:k]`` without sorting (or copying twice) every score."""
    if len(score) <= k:
        return np.argsort(-score, kind="stable")
    kth = np.partition(score, len(score) - k)[len(score) - k]
    candidates = np.flatnonzero(score >= kth)  # every tie of the k-th score, in position order
    return candidates[np.argsort(-score[candidates], kind="stable")[:k]]


def source_of(uids: np.ndarray, source_first: np.ndarray) -> np.ndarray:
    """Source codes of ``uids`` from each source's first uid (-1: a source without rows)."""
    present = np.flatnonzero(source_first >= 0)
    present = present[np.argsort(source_first[present], kind="stable")]
    if len(present) == 0:
        return np.zeros(len(uids), dtype=np.int64)
    return present[np.maximum(np.searchsorted(source_first[present], uids, side="right") - 1, 0)]


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

    def merged(self, other: IdLookup) -> IdLookup:
        """Both lookups' rows (a uid in both, once)."""
        uid = np.concatenate([self.uids, other.uids])
        _, first = np.unique(uid, return_index=True)
        both = pa.concat_arrays([self.ids, other.ids]) if len(other.uids) else self.ids
        return self if len(first) == len(self.uids) else IdLookup(uid[first], both.take(pa.array(first)))


@dataclass(frozen=True)
class LedgerColumns:
    """The decided rows as the write tasks see them: numbers by position, which a settled block's
    state holds per row as its survivor ``key`` (no uid array: the object-store pages the driver
    writes count in its memory); flags, details and ids by uid."""

    status: np.ndarray
    reason: np.ndarray
    reasons: tuple[str, ...]
    matched_uid: np.ndarray
    score: np.ndarray
    source_names: tuple[str, ...]
    source_first: np.ndarray
    flags: dict[int, Flag]
    details: dict[int, str]
    ids: IdLookup

    def rows(self, at: np.ndarray, uid: np.ndarray, detail: list[str]) -> dict[str, Any]:
        """The ledger's decided columns for the decided rows at positions ``at``, which are the rows
        ``uid`` (whose parsed details are ``detail``)."""
        require(bool((at >= 0).all() and (at < len(self.status)).all()), "the ledger is joined only for decided rows")
        return self.joined(
            uid,
            self.status[at],
            np.asarray(self.reasons, dtype=object)[self.reason[at]].tolist() if len(at) else [],
            self.matched_uid[at],
            self.score[at],
            detail,
        )

    def joined(
        self, uid: np.ndarray, status: np.ndarray, reason: list[str], matched: np.ndarray, score, detail: list[str]
    ) -> dict[str, Any]:
        """The ledger's decided columns from per-row numbers (ids, sources and flags joined by uid)."""
        has_match = matched >= 0
        matched_code = source_of(np.maximum(matched, 0), self.source_first)
        flags = [self.flags.get(int(u)) for u in uid] if self.flags else [None] * len(uid)
        matched_id = np.full(len(uid), "", dtype=object)
        matched_id[has_match] = self.ids(matched[has_match]).to_numpy(zero_copy_only=False)
        for k, flag in enumerate(flags):
            if flag is not None and not has_match[k]:
                matched_id[k] = flag.item_id
        return {
            "source_index": uid - self.source_first[source_of(uid, self.source_first)],
            "status": np.asarray(STATUS_NAMES, dtype=object)[status].tolist() if len(status) else [],
            "reason": reason,
            "detail": [self.details.get(int(u), d) for u, d in zip(uid, detail)] if self.details else detail,
            "matched_id": matched_id.tolist(),
            "matched_source": np.where(
                has_match, np.asarray(self.source_names, dtype=object)[matched_code], ""
            ).tolist(),
            "matched_source_index": np.where(has_match, matched - self.source_first[matched_code], -1),
            "score": score,
            "benchmark": [f.benchmark if f else "" for f in flags],
            "category": [f.category if f else "" for f in flags],
            "signal": [f.signal if f else "" for f in flags],
        }


def _uids(batch: pa.Table, file_offset: np.ndarray) -> np.ndarray:
    return file_offset[batch["file_rank"].to_numpy()] + batch["row_in_file"].to_numpy()


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
    blocks: InputBlocks,
    decided: LedgerColumns,
    conversations: bool = False,
    script_details: dict[str, str] | None = None,
) -> None:
    """Write ``kept/`` (canonical schema, input order; plus ``messages`` when
    ``conversations``: some valid row is one) and ``ledger/`` (every input row) as Parquet, one
    part of each per parsed block, named by the block's first row so that file order is input
    order. One task a block joins the parsed rows, their state (:mod:`.input_rows`) and the
    driver's ``decided`` rows; ``script_details`` (script -> detail) marks the valid rows written
    in a script the model does not read. A write that fails (a full disk) comes back as a value,
    not a task traceback, and is raised here as one :class:`EnvironmentFailure`."""
    for folder in ("kept", "ledger"):
        (staging / folder).mkdir()
    kept_schema = KEPT_CHAT_SCHEMA if conversations else KEPT_SCHEMA
    shared = ray.put(decided)  # once in the object store, not inside every task's arguments
    settings = (str(staging), kept_schema, script_details or {})
    # the winners' id tables go as arguments of their own: a list of refs nested in one argument
    # made the driver map object-store pages (measured: +258 MB at 10M rows)
    written = [
        _write_task.remote(block, start, stop, state, shared, settings, *blocks.winner_ids)
        for (block, start, stop), state in zip(blocks.spans, blocks.states)
    ]
    problems = [e for e in wait_all(written, blocks.timeout_s) if e]
    if problems:
        raise EnvironmentFailure(
            f"writing the output: {problems[0]}"
            + (f" (and {len(problems) - 1} more parts)" if len(problems) > 1 else "")
        )
    for folder, schema in (("kept", kept_schema), ("ledger", LEDGER_SCHEMA)):
        if not any((staging / folder).glob("*.parquet")):  # readers of an empty output still need the schema
            pq.write_table(schema.empty_table(), staging / folder / "empty.parquet")


@ray.remote(num_cpus=1)
def _write_task(
    block: pa.Table, start: int, stop: int, state: dict, decided: LedgerColumns, settings: tuple, *tables: pa.Table
):
    """One block's write; ``tables``: (uid, id) of every exact-dedup winner that beat a row, in uid order."""
    staging, kept_schema, script_details = settings
    winners = np.unique(state["matched_uid"][state["status"] == REMOVED])
    if len(winners):
        found = pa.concat_tables(tables)
        lookup = IdLookup(found["uid"].to_numpy(), found["id"].combine_chunks())
        decided = replace(decided, ids=decided.ids.merged(IdLookup(winners, lookup(winners))))
    return write_block(block.slice(start, stop - start), state, staging, decided, kept_schema, script_details)


def write_block(
    batch: pa.Table,
    state: dict,
    staging: str,
    decided: LedgerColumns,
    kept_schema: pa.Schema = KEPT_SCHEMA,
    script_details: dict[str, str] | None = None,
) -> str:
    """Write one block's ``kept/`` and ``ledger/`` parts; returns "" or what went wrong."""
    uid = state["uid"]
    name = f"part-{int(uid.min()):012d}.parquet"
    at = state["key"]  # a survivor's position among the decided rows; -1 for the rows settled in the block
    mine = at >= 0
    status = state["status"].copy()
    status[mine] = decided.status[at[mine]]
    reasons = np.asarray([*state["reasons"], "exact_duplicate"], dtype=object)
    reason = reasons[np.where(state["status"] == REMOVED, len(reasons) - 1, state["reason"])]
    reason[mine] = np.asarray(decided.reasons, dtype=object)[decided.reason[at[mine]]]
    matched = state["matched_uid"].copy()
    matched[mine] = decided.matched_uid[at[mine]]
    score = np.where(state["status"] == REMOVED, 1.0, np.nan)
    score[mine] = decided.score[at[mine]]
    detail = batch["detail"].to_pylist()
    if script_details:
        scripts = np.asarray(state["scripts"], dtype=object)
        for k in np.flatnonzero(state["valid"]):
            said = script_details.get(scripts[state["script"][k]])
            detail[k] = said if said is not None else detail[k]
    columns = {"source": batch["source"], "file": batch["file"], "id": batch["id"]}
    columns.update(decided.joined(uid, status, reason.tolist(), matched, score, detail))
    kept = batch.filter(pa.array(status == KEPT))
    kept_columns = [kept["id"], kept["instruction"], kept["input"], kept["output"], kept["source"]]
    kept = pa.table(
        kept_columns + [kept[MESSAGES]] if MESSAGES in kept_schema.names else kept_columns, schema=kept_schema
    )
    try:
        if kept.num_rows:
            pq.write_table(kept, f"{staging}/kept/{name}")
        pq.write_table(pa.table([columns[n] for n in LEDGER_COLUMNS], schema=LEDGER_SCHEMA), f"{staging}/ledger/{name}")
    except OSError as exc:
        return describe_os_error(exc, f"{staging}/{name}") or f"{exc} ({staging})"
    return ""


def summarize(
    decisions: Decisions,
    embedded_rows: int,
    embed_seconds: float,
    n_items: dict[str, int],
    source_names: list[str],
    warnings: list[str],
    others: Counts | None = None,
) -> dict:
    """Counts per source and reason of the decided rows and of ``others`` (the rows decided in their
    blocks: invalid ones, exact duplicates); they reconcile with the ledger by construction and by check.

    ``source_names``: every source the run read, so one with 0 rows (an empty, blank-only or
    header-only file) is counted, and named in a warning, rather than missing."""
    counts = decisions.counts()
    if others is not None:
        counts.add(others)
    entries = sorted(counts.entries.items(), key=lambda item: item[1][1])  # groups by first uid
    source = decisions.source
    per_source = {}
    codes = {name: code for code, name in enumerate(source.names)}
    appearing = list(dict.fromkeys(source.names[code] for (code, _, _), _ in entries))
    for name in dict.fromkeys([*source_names, *appearing]):
        mine = [(key, value) for key, value in entries if key[0] == codes.get(name, -1)]
        per_source[name] = {
            "rows": sum(count for _, (count, _) in mine),
            "kept": _total(mine, KEPT),
            "invalid": _total(mine, INVALID),
            "removed": _reason_counts(mine, REMOVED),
        }
    contamination: dict[str, dict[str, int]] = {}
    for uid in decisions.flagged():
        flag = decisions.flags[int(uid)]
        entry = contamination.setdefault(flag.benchmark, {"flagged": 0, "removed": 0})
        entry["flagged"] += 1
        entry["removed"] += int(decisions.status_of(uid) == REMOVED)
        entry[flag.category] = entry.get(flag.category, 0) + 1
    stats: dict[str, Any] = {
        "input_rows": sum(count for _, (count, _) in entries),
        "kept": _total(entries, KEPT),
        "invalid": _total(entries, INVALID),
        "removed": _reason_counts(entries, REMOVED),
        "invalid_reasons": _reason_counts(entries, INVALID),
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


def _total(entries: list, status: int) -> int:
    return sum(count for (_, st, _), (count, _) in entries if st == status)


def _reason_counts(entries: list, status: int) -> dict[str, int]:
    """Rows per reason among the groups of ``status`` (``entries`` by first uid): reasons by their first row."""
    out: dict[str, list[int]] = {}
    for (_, st, reason), (count, first) in entries:
        if st == status:
            entry = out.setdefault(reason, [0, first])
            entry[0] += count
            entry[1] = min(entry[1], first)
    return {reason: count for reason, (count, _) in sorted(out.items(), key=lambda item: item[1][1])}
