"""Read instruction sources into canonical rows with Ray Data: one task per file, every row kept.

A row that cannot be used (malformed JSON line, missing field, non-string, empty) is not
dropped: it becomes an ``invalid`` row with a reason and goes to the ledger. A file that
cannot be read as its format at all is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyarrow as pa
import ray

from platypus_ray.core.blocks import rows_only
from platypus_ray.core.conversation import MESSAGES_TYPE
from platypus_ray.core.errors import InputError
from platypus_ray.core.paths import COMPRESSIONS, expand_files, is_remote, without_compression
from platypus_ray.core.readers import Record, format_of, read_file
from platypus_ray.refine.config import SOURCE_EXTENSIONS, ColumnMapping, SourceConfig
from platypus_ray.refine.conversations import detect_shape, single_turn, user_turns, validate_conversation
from platypus_ray.refine.languages import dominant_script
from platypus_ray.refine.rows import (
    content_id,
    conversation_dedup_key,
    conversation_id,
    conversation_text,
    dedup_key,
    embed_text,
    raw_id,
    validate_record,
)

UNREADABLE = "unreadable_file"

PARSED_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("file_rank", pa.int64()),  # global rank of the file over all sources, in config order
        ("row_in_file", pa.int64()),
        ("valid", pa.bool_()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("messages", MESSAGES_TYPE),  # a conversation row's turns (a system prompt first); null: an Alpaca row
        ("conversation", pa.bool_()),  # messages is set: the driver's cue that kept/ needs the messages column
        ("dedup_key", pa.int64()),
        ("text_len", pa.int64()),
        ("output_len", pa.int64()),
        ("script", pa.string()),  # dominant Unicode script of the embedded text (refine/languages.py)
    ]
)


@dataclass(frozen=True)
class SourceFile:
    source: str
    path: str
    file_rank: int
    format: str
    columns: dict[str, str]
    field: str | None = None  # JSON: the top-level key whose list holds the records
    # a piece of a large local JSONL file: (start, stop, newlines before start - 1); see split_large_files
    byte_range: tuple[int, int, int] | None = None
    shape: str = "auto"  # alpaca, messages, sharegpt; auto: from the file's first records (conversations.py)
    embed_turns: str = "all"  # a conversation's embedded text (rows.conversation_text)


def list_source_files(sources: list[SourceConfig], embed_turns: str = "all") -> list[SourceFile]:
    """All input files in input order: sources as configured, files sorted within each."""
    files: list[SourceFile] = []
    for src in sources:
        paths = expand_files(src.path, SOURCE_EXTENSIONS)
        if not paths:
            raise InputError(f"source '{src.source_name}': '{src.path}' names no {'/'.join(SOURCE_EXTENSIONS)} file")
        for path in paths:
            fmt = src.format or _infer_format(path)
            files.append(
                SourceFile(
                    src.source_name,
                    path,
                    len(files),
                    fmt,
                    src.columns.model_dump(),
                    src.field,
                    shape=src.shape,
                    embed_turns=embed_turns,
                )
            )
    return files


PIECE_BYTES = 32 * 2**20  # a read task's share of a large JSONL file: ~80k Alpaca-sized rows


def split_large_files(files: list[SourceFile], piece_bytes: int | None = None) -> list[SourceFile]:
    """The read tasks: a local, uncompressed JSONL file larger than ``piece_bytes`` becomes byte
    ranges that tile it (one task each, so a 1M-row file is not parsed on one core), everything
    else one task. ``file_rank`` becomes the piece's rank; pieces of a file keep its order, so
    (rank, row) still sorts rows in input order, and rows keep the line numbers of the file."""
    pieces: list[SourceFile] = []
    for sf in files:
        ranges = _byte_ranges(sf, piece_bytes or PIECE_BYTES)
        if len(ranges) > 1 and sf.shape == "auto":  # one shape for the file, from its head, not one per piece
            sf = replace(sf, shape=_file_shape(sf))
        for byte_range in ranges:
            pieces.append(replace(sf, file_rank=len(pieces), byte_range=byte_range))
    return pieces


def _file_shape(sf: SourceFile) -> str:
    records = _records(sf)
    try:
        head, _ = _head_objects(records)
    except Exception:  # noqa: BLE001 - unreadable now: each piece's read task reports it, naming the file
        return "auto"
    finally:
        getattr(records, "close", lambda: None)()  # a generator: its file closes now
    return detect_shape(head, ColumnMapping(**sf.columns))


def _byte_ranges(sf: SourceFile, piece_bytes: int) -> list[tuple[int, int, int] | None]:
    if sf.format != "jsonl" or sf.field is not None or is_remote(sf.path) or without_compression(sf.path) != sf.path:
        return [None]
    try:
        size = os.path.getsize(sf.path)
        if size <= piece_bytes or not _starts_with_an_object(sf.path):
            return [None]  # small, or a JSON array in a .jsonl file (read whole, as a document)
        n = -(-size // piece_bytes)
        starts = [k * size // n for k in range(n)]
        # one pass over the file counts the newlines before each piece, so rows keep the file's line numbers
        newlines = _newlines_before(sf.path, [max(start - 1, 0) for start in starts])
    except OSError:  # gone or unreadable since it was listed: its read task reports it, naming the file
        return [None]
    return [(start, stop, count) for start, stop, count in zip(starts, starts[1:] + [size], newlines)]


def _newlines_before(path: str, offsets: list[int], chunk: int = 1 << 24) -> list[int]:
    """The number of ``\n`` bytes before each of the ascending ``offsets``, in one streaming read."""
    counts: list[int] = []
    seen = position = 0
    with open(path, "rb") as handle:
        while len(counts) < len(offsets) and (data := handle.read(chunk)):
            while len(counts) < len(offsets) and offsets[len(counts)] <= position + len(data):
                counts.append(seen + data.count(b"\n", 0, offsets[len(counts)] - position))
            seen += data.count(b"\n")
            position += len(data)
    return counts + [seen] * (len(offsets) - len(counts))


def _starts_with_an_object(path: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"{"


def read_sources(files: list[SourceFile]) -> ray.data.Dataset:
    """A Ray Data dataset of parsed rows (valid and invalid), one block per piece (see
    :func:`split_large_files`; ``files`` are the pieces)."""
    items = [asdict(f) for f in files]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _parse_files, batch_size=1, batch_format="pyarrow"
    )


@rows_only(PARSED_SCHEMA)
def _parse_files(batch: pa.Table) -> pa.Table:
    rows = batch.to_pylist()
    for row in rows:  # Arrow hands the range back as a list
        if row.get("byte_range") is not None:
            row["byte_range"] = tuple(row["byte_range"])
    return pa.concat_tables([_parse_or_report(SourceFile(**row)) for row in rows])


def _parse_or_report(sf: SourceFile) -> pa.Table:
    """A file that cannot be read at all becomes one marker row (``row_in_file`` -1) that
    :func:`check_readable` turns into an error on the driver: raising here would make Ray
    print its own traceback before ours."""
    try:
        return parse_source_file(sf)
    except InputError as exc:
        row: dict[str, Any] = {f.name: None for f in PARSED_SCHEMA}
        row.update(
            source=sf.source,
            file=sf.path,
            file_rank=sf.file_rank,
            row_in_file=-1,
            valid=False,
            reason=UNREADABLE,
            detail=str(exc),
        )
        return pa.Table.from_pylist([row], schema=PARSED_SCHEMA)


def check_readable(problems: list[str]) -> None:
    """Raise one InputError naming every file that could not be read as its format (the details
    of the marker rows, a file's pieces once)."""
    if problems:
        raise InputError("; ".join(problems))


def parse_source_file(sf: SourceFile) -> pa.Table:
    """Parse one file into PARSED_SCHEMA rows, one per input record, in file order."""
    columns = ColumnMapping(**sf.columns)
    out: dict[str, list[Any]] = {f.name: [] for f in PARSED_SCHEMA}
    records = _records(sf)
    shape = sf.shape
    if shape == "auto":  # a file cut into pieces was settled for all of them (split_large_files)
        head, records = _head_objects(records)
        shape = detect_shape(head, columns)
    for row_in_file, record in enumerate(records):
        row = _parse_record(record, shape, columns, sf.embed_turns)
        out["source"].append(sf.source)
        out["file"].append(sf.path)
        out["file_rank"].append(sf.file_rank)
        out["row_in_file"].append(row_in_file)
        for name, value in row.items():
            out[name].append(value)
        out["detail"][-1] = f"{record.where}: {row['detail']}" if row["detail"] else ""
    return pa.table(out, schema=PARSED_SCHEMA)


def _parse_record(record: Record, shape: str, columns: ColumnMapping, embed_turns: str) -> dict[str, Any]:
    """The parsed columns of one record (all but the file's), valid or not."""
    messages = fields = None
    if record.reason:
        reason, detail = record.reason, record.detail
    elif shape == "alpaca":
        fields, reason, detail = validate_record(record.value, columns)
    else:
        messages, reason, detail = validate_conversation(record.value, shape, columns)
    row: dict[str, Any] = {"valid": fields is not None or messages is not None, "reason": reason, "detail": detail}
    if messages is not None:
        one = single_turn(messages)  # kept/ keeps the Alpaca columns of a one-exchange conversation
        instruction, input_text, output = (one[0], "", one[1]) if one else (None, None, None)
        row.update(id=conversation_id(messages), dedup_key=conversation_dedup_key(user_turns(messages)))
        text = conversation_text(user_turns(messages), embed_turns)
        output_len = sum(len(m["content"]) for m in messages if m["role"] == "assistant")
    else:
        if fields is None:
            fields = {"instruction": "", "input": "", "output": ""}
            row.update(id=raw_id(record.raw), dedup_key=0)
        else:
            row.update(id=content_id(fields["instruction"], fields["input"], fields["output"]))
            row.update(dedup_key=dedup_key(fields["instruction"], fields["input"]))
        instruction, input_text, output = fields["instruction"], fields["input"], fields["output"]
        text = embed_text(instruction, input_text)
        output_len = len(output)
    row.update(instruction=instruction, input=input_text, output=output, messages=messages)
    row.update(conversation=messages is not None)
    row.update(text_len=len(text), output_len=output_len, script=dominant_script(text) if row["valid"] else "")
    return row


SHAPE_HEAD = 16  # objects a file's shape is detected from


def _head_objects(records: Iterator[Record]) -> tuple[list[Any], Iterator[Record]]:
    """The first SHAPE_HEAD records that are objects (what the shape is detected from), and all
    the records still in order."""
    seen: list[Record] = []
    head: list[Any] = []
    for record in records:
        seen.append(record)
        if isinstance(record.value, dict):
            head.append(record.value)
            if len(head) == SHAPE_HEAD:
                break
    return head, itertools.chain(seen, records)


def _infer_format(path: str) -> str:
    fmt = format_of(path)
    if fmt is None:
        raise InputError(
            f"cannot infer the format of '{path}'; set `format:` to one of {', '.join(SOURCE_EXTENSIONS)} "
            f"(compressed: {', '.join(COMPRESSIONS)} after the format's extension)"
        )
    return fmt


def _records(sf: SourceFile) -> Iterator[Record]:
    return read_file(sf.path, sf.format, sf.field, byte_range=sf.byte_range)
