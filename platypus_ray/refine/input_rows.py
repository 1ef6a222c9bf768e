"""Every input row's state, in object-store blocks beside the parsed blocks: the driver holds counts.

One state per parsed block (a dict of per-row arrays, :func:`start_state`) holds, per row, its
source and validity, its parse reason and script (as codes), its exact-dedup key and output
length, and once :func:`settle` has run its uid, status, exact-duplicate match and survivor key.
Tasks make and read these blocks; the driver sees only per-block summaries (rows per file,
per-source script and reason counts, the unreadable files) and, from exact dedup on, the
survivors: what embedding, decontamination and semantic dedup work on.

Exact dedup is a hash shuffle: each block sends its valid rows' (key, output length, uid) to the
reducer that owns the key; a reducer keeps, per key, the longest output (ties by input order) and
names every other row's winner; each block then reads its own losers back. Every row is counted
in a summary, so the ledger reconciles without the driver holding a row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from platypus_ray.core.blocks import block_spans
from platypus_ray.core.conversation import MESSAGES_TYPE
from platypus_ray.core.errors import require
from platypus_ray.core.waits import wait_all
from platypus_ray.embedding import HASH_BYTES, hash_array
from platypus_ray.refine.rows import row_text
from platypus_ray.refine.sources import UNREADABLE

KEPT, INVALID, REMOVED = range(3)  # the ledger's statuses (ledger.STATUS_NAMES)
EXACT_DUPLICATE = "exact_duplicate"
KEYED_SCHEMA = pa.schema(
    [
        ("key", pa.int64()),
        ("text", pa.string()),
        ("text_hash", pa.binary(HASH_BYTES)),
        ("text_len", pa.int64()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("messages", MESSAGES_TYPE),
    ]
)
_ROW_BITS = 40  # a position is file rank << 40 | (row in file + 1): rows per file below 2**40


@dataclass
class Summary:
    """What the driver learns of the input: numbers per file, source, script and reason, no rows."""

    rows: int = 0
    file_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # rows per file piece
    source_first: dict[int, int] = field(default_factory=dict)  # source code -> its first position
    scripts: dict[tuple[int, str], int] = field(default_factory=dict)  # (source, script) -> valid rows
    unreadable: list[str] = field(default_factory=list)  # details of unreadable files' marker rows
    conversation: bool = False
    valid: int = 0

    def add(self, other: Summary) -> None:
        self.rows += other.rows
        self.file_rows = self.file_rows + other.file_rows
        for code, first in other.source_first.items():
            self.source_first[code] = min(first, self.source_first.get(code, first))
        for key, count in other.scripts.items():
            self.scripts[key] = self.scripts.get(key, 0) + count
        self.unreadable += [u for u in other.unreadable if u not in self.unreadable]
        self.conversation |= other.conversation
        self.valid += other.valid


@dataclass
class Counts:
    """Rows per (source code, status, reason), each with its first uid: how the rows the driver does
    not decide on (invalid ones, exact duplicates) enter the stats in input order."""

    entries: dict[tuple[int, int, str], list[int]] = field(default_factory=dict)

    def add_rows(self, source: np.ndarray, status: np.ndarray, reason: np.ndarray, names: list, uid: np.ndarray):
        """Count rows given as arrays (``reason``: codes into ``names``; ``uid`` ascending). One int64
        code a row and one mask at a time: the groups are few, the rows many."""
        if not len(uid):
            return
        n_status, n_reasons = 3, max(len(names), int(reason.max()) + 1)
        code = (source.astype(np.int64) * n_status + status) * n_reasons + reason
        counts = np.bincount(code)
        for c in np.flatnonzero(counts).tolist():
            first = int(np.argmax(code == c))
            self._add(
                c // (n_status * n_reasons), c // n_reasons % n_status, names[c % n_reasons], counts[c], int(uid[first])
            )

    def add(self, other: Counts) -> None:
        for key, (count, first) in other.entries.items():
            self._add(*key, count, first)

    def _add(self, source: int, status: int, reason: str, count: int, first: int) -> None:
        entry = self.entries.setdefault((int(source), int(status), reason), [0, first])
        entry[0] += int(count)
        entry[1] = min(entry[1], int(first))


@dataclass
class InputBlocks:
    """The parsed blocks (as spans) and their states, in input order."""

    spans: list  # (parsed block ref, start, stop)
    states: list  # state refs, one per span
    summary: Summary
    firsts: list[int]  # each block's first position
    file_offset: np.ndarray  # each file piece's first uid
    source_names: list[str]
    timeout_s: float
    # once settled: the (uid, id) of every exact-dedup winner that beat a row, in uid order, as a few
    # object-store tables (one per run of consecutive blocks) that the write tasks read
    winner_ids: list = field(default_factory=list)

    def first_uids(self) -> np.ndarray:
        return np.array([self.uid_of_position(first) for first in self.firsts], dtype=np.int64)

    @property
    def n(self) -> int:
        return self.summary.rows

    def source_first_uid(self) -> np.ndarray:
        """Per source code: its first uid (-1 for a source without rows)."""
        first = np.full(len(self.source_names), -1, dtype=np.int64)
        for code, position in self.summary.source_first.items():
            first[code] = self.uid_of_position(position)
        return first

    def uid_of_position(self, position: int) -> int:
        return int(self.file_offset[position >> _ROW_BITS] + (position & ((1 << _ROW_BITS) - 1)) - 1)


def start(parsed: ray.data.Dataset, pieces: list, timeout_s: float) -> InputBlocks:
    """One state per parsed block, made by tasks; the summary on the driver."""
    source_names = list(dict.fromkeys(piece.source for piece in pieces))
    source_of_file = np.array([source_names.index(piece.source) for piece in pieces], dtype=np.int16)
    spans = block_spans(parsed)
    made: list[Any] = [_start_block.options(num_returns=2).remote(*span, source_of_file) for span in spans]
    summaries = wait_all([summary for _, summary in made], timeout_s)
    order = sorted(range(len(spans)), key=lambda b: summaries[b][1])  # blocks by their first row
    for before, after in zip(order, order[1:]):
        require(summaries[before][2] < summaries[after][1], "parsed blocks hold disjoint runs of rows")
    summary = Summary(file_rows=np.zeros(len(pieces), dtype=np.int64))
    for b in order:
        summary.add(summaries[b][0])
    file_offset = np.concatenate([[0], np.cumsum(summary.file_rows)[:-1]]).astype(np.int64)
    return InputBlocks(
        [spans[b] for b in order],
        [made[b][0] for b in order],
        summary,
        [summaries[b][1] for b in order],
        file_offset,
        source_names,
        timeout_s,
    )


@ray.remote(num_cpus=1)
def _start_block(block: pa.Table, start: int, stop: int, source_of_file: np.ndarray):
    return start_state(block.slice(start, stop - start), source_of_file)


def start_state(table: pa.Table, source_of_file: np.ndarray) -> tuple[dict, tuple[Summary, int, int]]:
    """A parsed block's state and (its summary, its first and last rows' positions)."""
    file_rank = table["file_rank"].to_numpy()
    row = table["row_in_file"].to_numpy()
    source = source_of_file[file_rank]
    valid = pc.fill_null(table["valid"], False).to_numpy(zero_copy_only=False)
    reason = pc.fill_null(table["reason"], "").dictionary_encode().combine_chunks()
    script = pc.fill_null(table["script"], "").dictionary_encode().combine_chunks()
    state = {
        "file_rank": file_rank,
        "row": row,
        "source": source,
        "valid": valid,
        "reason": reason.indices.to_numpy(zero_copy_only=False),
        "reasons": reason.dictionary.to_pylist(),
        "script": script.indices.to_numpy(zero_copy_only=False),
        "scripts": script.dictionary.to_pylist(),
        "dedup_key": pc.fill_null(table["dedup_key"], 0).to_numpy(),
        "output_len": pc.fill_null(table["output_len"], 0).to_numpy(),
    }
    position = (file_rank << _ROW_BITS) + (row + 1)  # a marker row (row -1) sits at its file's start
    require(bool((position[1:] > position[:-1]).all()), "a parsed block's rows are in file order")
    summary = Summary(
        rows=len(row),
        file_rows=np.bincount(file_rank, minlength=len(source_of_file)),
        valid=int(valid.sum()),
        conversation=bool(pc.any(pc.fill_null(table["conversation"], False)).as_py() or False),
    )
    codes, first = np.unique(source, return_index=True)
    summary.source_first = {int(c): int(position[f]) for c, f in zip(codes, first)}
    pairs, counts = np.unique(np.stack([source[valid], state["script"][valid]]), axis=1, return_counts=True)
    summary.scripts = {(int(s), state["scripts"][k]): int(c) for (s, k), c in zip(pairs.T, counts)}
    marker = pc.equal(pc.fill_null(table["reason"], ""), UNREADABLE)
    summary.unreadable = list(dict.fromkeys(table["detail"].filter(marker).to_pylist()))
    return state, (summary, int(position[0]), int(position[-1]))


@dataclass
class Settled:
    """Exact dedup's result: the survivors (sorted uids) with their priorities and sources, the
    keyed rows (the embedding's input, by survivor key) and the counts of every row that did not
    survive. The winners' ids stay in the object store (:attr:`InputBlocks.winner_ids`)."""

    survivors: np.ndarray
    output_len: np.ndarray | None  # None when not asked for
    source: np.ndarray
    keyed: ray.data.Dataset
    counts: Counts
    stats: dict  # reducers, tasks (the map, reduce and settle steps), and per node the reduce and settle tasks


def settle(blocks: InputBlocks, embed_turns: str, reducers: int, priorities: bool = True) -> Settled:
    """Exact dedup over all blocks (a hash shuffle of tasks), then each block's rows keyed.
    ``priorities``: fetch the survivors' output lengths (``keep: longest_output`` orders by them;
    ``first`` does not, and its driver then holds none)."""
    timeout_s = blocks.timeout_s
    parts = max(1, reducers)
    sent: list[Any] = [
        _exact_keys.options(num_returns=parts).remote(s, blocks.file_offset, parts) for s in blocks.states
    ]
    sent = [[refs] if parts == 1 else refs for refs in sent]
    reduced: list[Any] = [
        _exact_groups.options(num_returns=3).remote(*[refs[p] for refs in sent]) for p in range(parts)
    ]
    del sent
    losers = [losers for losers, _, _ in reduced]
    winners = wait_all([w for _, w, _ in reduced], timeout_s)
    nodes = Counter(node for _, node in winners)
    survivors = np.sort(np.concatenate([w for w, _ in winners])) if winners else np.empty(0, dtype=np.int64)
    matched = [m for _, _, m in reduced]
    del winners
    key_start = np.searchsorted(survivors, blocks.first_uids()).tolist()
    made: list[Any] = [
        _settle_block.options(num_returns=5).remote(
            *span, state, blocks.file_offset, k, embed_turns, priorities, len(losers), *losers, *matched
        )
        for span, state, k in zip(blocks.spans, blocks.states, key_start)
    ]
    blocks.states = [state for state, *_ in made]
    blocks.winner_ids = [
        _concat_ids.remote(*[made[b][4] for b in group]) for group in np.array_split(np.arange(len(made)), parts)
    ]
    per_block = wait_all([out for _, _, out, _, _ in made], timeout_s)
    counts = Counts()
    for c in wait_all([c for _, _, _, c, _ in made], timeout_s):
        counts.add(c)
    nodes.update(node for *_, node in per_block)
    source = np.concatenate([s for _, s, *_ in per_block]) if per_block else np.empty(0, np.int16)
    require(len(source) == len(survivors), "every survivor of exact dedup is keyed once")
    output_len = None
    if priorities:
        output_len = np.concatenate([o for o, *_ in per_block]) if per_block else np.empty(0, np.int64)
    keyed = (
        ray.data.from_arrow_refs([k for _, k, *_ in made]) if made else ray.data.from_arrow(KEYED_SCHEMA.empty_table())
    )
    stats = {"reducers": parts, "tasks": len(made) * 2 + parts, "tasks_per_node": dict(sorted(nodes.items()))}
    return Settled(survivors, output_len, source, keyed, counts, stats)


def _uids(state: dict, file_offset: np.ndarray) -> np.ndarray:
    return file_offset[state["file_rank"]] + state["row"]


@ray.remote(num_cpus=1)
def _exact_keys(state: dict, file_offset: np.ndarray, parts: int):
    """The valid rows' (key, output length, uid), split by the reducer that owns each key."""
    valid = state["valid"]
    key = state["dedup_key"][valid]
    rows = np.stack([key, state["output_len"][valid].astype(np.int64), _uids(state, file_offset)[valid]])
    owner = (key.view(np.uint64) % np.uint64(parts)).astype(np.int64)
    out = [np.ascontiguousarray(rows[:, owner == p]) for p in range(parts)]
    return out[0] if parts == 1 else out


@ray.remote(num_cpus=1)
def _exact_groups(*pieces: np.ndarray):
    """Per key, the longest output wins (ties by input order). Returns the losers (uid, winner uid)
    sorted by uid, the winners' uids and the winners that beat some row."""
    rows = np.concatenate(pieces, axis=1) if pieces else np.empty((3, 0), dtype=np.int64)
    losers, winners, matched = exact_winners(rows[0], rows[1], rows[2])
    return losers, (winners, _node()), matched


def exact_winners(key: np.ndarray, output_len: np.ndarray, uid: np.ndarray):
    """Collapse rows with equal ``key``: the longest output wins, ties by the smaller uid (input order).
    Returns (losers as a (2, m) array of uid and winner uid, sorted by uid; winners; winners with losers)."""
    order = np.lexsort((uid, -output_len, key))
    key, uid = key[order], uid[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    group = np.cumsum(first) - 1
    winners = uid[first]
    loser_uid = uid[~first]
    loser_winner = winners[group[~first]]
    by_uid = np.argsort(loser_uid, kind="stable")
    losers = np.stack([loser_uid[by_uid], loser_winner[by_uid]])
    return losers, np.sort(winners), np.unique(loser_winner)


@ray.remote(num_cpus=1)
def _settle_block(
    block: pa.Table,
    start: int,
    stop: int,
    state: dict,
    file_offset: np.ndarray,
    key_start: int,
    embed_turns: str,
    priorities: bool,
    reducers: int,
    *losers_and_winners,
):
    table = block.slice(start, stop - start)
    losers, winners = losers_and_winners[:reducers], losers_and_winners[reducers:]
    state, keyed, (output_len, source), counts = settle_state(table, state, file_offset, key_start, embed_turns, losers)
    priority = output_len if priorities else None
    return state, keyed, (priority, source, _node()), counts, winner_ids(table, state["uid"], winners)


ID_SCHEMA = pa.schema([("uid", pa.int64()), ("id", pa.string())])


@ray.remote(num_cpus=0.25)
def _concat_ids(*tables: pa.Table) -> pa.Table:
    """Consecutive blocks' winner ids as one table: a handful of object-store tables for the write
    tasks to read, where each block's own small table would sit inline in the driver and travel
    inside every write task's arguments."""
    return pa.concat_tables(tables) if tables else ID_SCHEMA.empty_table()


def winner_ids(table: pa.Table, uid: np.ndarray, winners) -> pa.Table:
    """(uid, id) of this block's rows among ``winners`` (each reducer's winners that beat a row, sorted)."""
    if not len(uid):
        return ID_SCHEMA.empty_table()
    found = []
    for part in winners:
        lo, hi = np.searchsorted(part, [uid[0], uid[-1] + 1])
        found.append(np.searchsorted(uid, part[lo:hi]))
    at = np.sort(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    return pa.table([uid[at], table["id"].take(pa.array(at, type=pa.int64()))], schema=ID_SCHEMA)


def _node() -> str:
    return ray.get_runtime_context().get_node_id()[:12]


def settle_state(
    table: pa.Table, state: dict, file_offset: np.ndarray, key_start: int, embed_turns: str, losers
) -> tuple[dict, pa.Table, tuple[np.ndarray, np.ndarray], Counts]:
    """Mark this block's exact duplicates (``losers``: each reducer's (uid, winner) sorted by uid), give
    its survivors their keys and build their keyed rows; return the new state, the keyed rows, the
    survivors' (output length, source) and the counts of the rows that did not survive."""
    uid = _uids(state, file_offset)
    n = len(uid)
    status = np.where(state["valid"], KEPT, INVALID).astype(np.int8)
    matched = np.full(n, -1, dtype=np.int64)
    if n:
        for part in losers:  # each reducer's losers, sorted by uid: this block's are one slice
            lo, hi = np.searchsorted(part[0], [uid[0], uid[-1] + 1])
            at = np.searchsorted(uid, part[0, lo:hi])
            require(bool((uid[at] == part[0, lo:hi]).all()), "an exact duplicate's uid is in its block")
            status[at] = REMOVED
            matched[at] = part[1, lo:hi]
    survivor = status == KEPT
    key = np.full(n, -1, dtype=np.int64)
    key[survivor] = key_start + np.arange(int(survivor.sum()))
    state = {**state, "uid": uid, "status": status, "matched_uid": matched, "key": key}

    names = [*state["reasons"], EXACT_DUPLICATE]
    reason = np.where(status == REMOVED, len(names) - 1, state["reason"])
    gone = ~survivor
    counts = Counts()
    counts.add_rows(state["source"][gone], status[gone], reason[gone], names, uid[gone])
    keyed = keyed_rows(table.filter(pa.array(survivor)), key[survivor], embed_turns)
    return state, keyed, (state["output_len"][survivor], state["source"][survivor]), counts


def keyed_rows(table: pa.Table, key: np.ndarray, embed_turns: str) -> pa.Table:
    """Parsed rows with their survivor ``key`` and embedded text: the embedding's input."""
    texts = [
        row_text(i, x, m, embed_turns)
        for i, x, m in zip(table["instruction"].to_pylist(), table["input"].to_pylist(), table["messages"].to_pylist())
    ]
    columns = [
        key,
        texts,
        hash_array(texts),
        table["text_len"],
        table["instruction"],
        table["input"],
        table["output"],
        table["messages"],
    ]
    return pa.table(columns, schema=KEYED_SCHEMA)
