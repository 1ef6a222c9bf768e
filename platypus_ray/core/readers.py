"""The records of one input file, whatever its bytes: one :class:`Record` per row. The one reader
of the project: training sources (refine) and benchmark test sets (``testsets.py``) both read here.

A row that cannot become a record (bad UTF-8, malformed JSON, a duplicated key, a ragged CSV
row) is still yielded, with a reason: refine's ledger accounts for it, a benchmark refuses it.
Only a file that cannot be read as its format at all (a broken JSON array, a broken Parquet
file, a stream that breaks) raises :class:`InputError`.

Rules that differ from the obvious one-liners, and why:
* JSONL is split on ``\\n`` only (``str.splitlines`` also splits on U+2028, U+2029, U+0085,
  which are legal inside JSON strings); bytes are decoded line by line, so one bad byte
  costs one row, not the file.
* A UTF-8 byte-order mark is dropped (Windows tools write one).
* ``{"a": 1, "a": 2}`` is quarantined: silently keeping the last value hides a broken export.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import lzma
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from platypus_ray.core.errors import InputError
from platypus_ray.core.paths import lines, open_input, without_compression

_BOM = b"\xef\xbb\xbf"
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # how errors="surrogateescape" spells an undecodable byte
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long outputs are ordinary in instruction data


@dataclass(frozen=True)
class Record:
    """One input row: the parsed value, or why there is none."""

    value: Any
    raw: str  # the row's text as read, for the id of an invalid row
    where: str  # "line 12" (JSONL, CSV) or "record 3" (JSON array, Parquet): where a person finds the row
    reason: str = ""
    detail: str = ""


class _DuplicatedKeys(dict):
    """A JSON object in which some key appears more than once (the first such key is kept)."""

    duplicate: str = ""


def _object(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result and not isinstance(result, _DuplicatedKeys):
            result = _DuplicatedKeys(result)
            result.duplicate = key
        result[key] = value
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_object)


def _loads(text: str) -> Any:
    if text.startswith("\ufeff"):  # json.loads's own error for a BOM, word for word
        return json.loads(text, object_pairs_hook=_object)
    return _DECODER.decode(text)  # json.loads with a hook builds a decoder per call: 5% of parsing a JSONL row


def _checked(value: Any, raw: str, where: str, bad_bytes: bool = False) -> Record:
    """``bad_bytes``: the file did not decode as UTF-8, so escaped bytes may hide in ``value``."""
    if isinstance(value, _DuplicatedKeys):
        return Record(None, raw, where, "duplicate_key", f"key {value.duplicate!r} appears more than once")
    escaped = _ESCAPED_BYTE.search(json.dumps(value, ensure_ascii=False)) if bad_bytes else None
    if escaped:
        byte = ord(escaped.group()) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
        return Record(None, raw, where, "invalid_utf8", f"byte {byte:#04x} is not UTF-8")
    return Record(value, raw, where)


FORMATS = ("json", "jsonl", "parquet", "csv")  # each also compressed: .gz, .bz2, .xz, .zst (paths.py)

# What a stream that breaks mid-read raises: the file vanished or a disk failed (OSError), a truncated
# or corrupt compressed file (EOFError, zlib.error, lzma.LZMAError, gzip's BadGzipFile is an OSError).
_READ_FAILURES = (OSError, EOFError, zlib.error, lzma.LZMAError)


def format_of(path: str) -> str | None:
    """The format a file's extension names, after any compression suffix (``a.jsonl.gz``: ``jsonl``);
    None for an extension that is not one of :data:`FORMATS`."""
    ext = without_compression(path).lower().rsplit(".", 1)[-1]
    return ext if ext in FORMATS else None


def read_file(
    path: str,
    fmt: str,
    field: str | None = None,
    header: bool = True,
    byte_range: tuple[int, int, int] | None = None,
) -> Iterator[Record]:
    """Every row of the file at ``path`` (local or a URI, plain or compressed; see
    :func:`~platypus_ray.core.paths.open_input`), as :func:`read_records` reads them; with a
    ``byte_range`` (start, stop, newlines before start - 1) of a local JSONL file, the rows of that
    piece (:func:`read_jsonl_range`). A stream that breaks mid-read (a truncated ``.gz``, a
    vanished file) is an :class:`InputError` naming the file."""
    try:
        if byte_range is not None:
            with open(path, "rb") as stream:
                yield from read_jsonl_range(stream, *byte_range)
            return
        with open_input(path) as stream:
            yield from read_records(stream, fmt, path, field, header)
    except _READ_FAILURES as exc:
        raise InputError(f"cannot read '{path}': {exc}") from None


def read_records(
    stream: BinaryIO, fmt: str, path: str, field: str | None = None, header: bool = True
) -> Iterator[Record]:
    """Every row of one file's (decompressed) byte stream in ``fmt`` (``json``, ``jsonl``, ``csv``,
    ``parquet``), in order. JSONL and CSV are read as they stream; a JSON document (an array, or
    an object with ``field``) is read whole. ``field``: the top-level key of a JSON object whose
    list holds the records, as the ``datasets`` JSON loader's ``field``. ``header=False``: a CSV
    file without a header row (MMLU's), each record the list of its fields."""
    if fmt == "parquet":
        yield from _parquet(stream.read(), path)
        return
    if fmt == "csv":
        yield from _csv(stream, path, header)
        return
    head, rest = _first_lines(lines(stream))
    start = b"".join(head).lstrip()[:1]
    if start == b"[" or field is not None or (fmt == "json" and start == b"{"):
        data = b"".join(head) + b"".join(rest)
        records = _json_document(data, path, strict=fmt == "json" or field is not None, field=field)
        if records is not None:
            yield from records
            return
        head, rest = [data], iter(())  # a .jsonl (or JSON Lines in a .json) file whose first line parses alone
    yield from _json_lines(itertools.chain(head, rest))


def _first_lines(stream_lines: Iterator[bytes]) -> tuple[list[bytes], Iterator[bytes]]:
    """The lines up to the first non-blank one (its BOM dropped), and the rest still unread."""
    head: list[bytes] = []
    for line in stream_lines:
        if not head and line.startswith(_BOM):
            line = line[len(_BOM) :]
        head.append(line)
        if line.strip():
            break
    return head, stream_lines


def read_jsonl_range(stream: BinaryIO, start: int, stop: int, newlines_before: int = 0) -> Iterator[Record]:
    """The JSON Lines rows whose first byte lies in ``[start, stop)`` of a seekable, uncompressed
    stream, numbered by their line in the whole file: ranges that tile a file read every row once
    (a line crossing a boundary belongs to the range it starts in). ``newlines_before``: how many
    ``\n`` bytes lie before ``start - 1`` (counted once for all ranges, see ``sources.split_large_files``)."""
    newlines = 0
    if start > 0:
        stream.seek(start - 1)
        # the rest of the line the previous range owns: just its newline if one ends at start - 1
        newlines = newlines_before + stream.readline().endswith(b"\n")
    begin = stream.tell()

    def owned() -> Iterator[bytes]:
        position = begin
        while position < stop and (line := stream.readline()):
            position += len(line)
            yield line[len(_BOM) :] if position == len(line) and line.startswith(_BOM) else line

    yield from _json_lines(owned(), first_line=newlines + 1)


def _json_lines(stream_lines: Iterable[bytes], first_line: int = 1) -> Iterator[Record]:
    for number, line in enumerate(_split_lines(stream_lines), start=first_line):
        line = line[:-1] if line.endswith(b"\r") else line
        if not line.strip():
            continue  # a blank line is not a row
        where = f"line {number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Record(
                None,
                line.decode("utf-8", "replace"),
                where,
                "invalid_utf8",
                f"byte {line[exc.start]:#04x} at byte {exc.start + 1} is not UTF-8",
            )
            continue
        try:
            value = _loads(text)
        except json.JSONDecodeError as exc:
            yield Record(None, text, where, "malformed_json", f"malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield Record(None, text, where, "malformed_json", "malformed JSON (nested too deeply)")
            continue
        yield _checked(value, text, where)


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines without their ``\\n`` from pieces that each end at a line end (or hold several lines)."""
    for chunk in chunks:
        yield from (chunk[:-1] if chunk.endswith(b"\n") else chunk).split(b"\n")


def _decoded(data: bytes) -> tuple[str, bool]:
    """Text of a whole-file format, and whether it had bytes that are not UTF-8: those survive
    as escapes that mark their rows invalid, so the other rows are still read."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True


def _json_document(data: bytes, path: str, strict: bool, field: str | None) -> list[Record] | None:
    """The records of a JSON array, or of the list under ``field`` of a JSON object; None (when not
    ``strict``) if the text is not one JSON document."""
    text, bad_bytes = _decoded(data)
    try:
        value = _loads(text)
    except json.JSONDecodeError as exc:
        if not strict:
            return None
        if field is None and text.lstrip()[:1] == "{":
            return None  # JSON Lines in a .json file
        raise InputError(
            f"'{path}' is not a valid JSON {'array' if field is None else 'document'} (line {exc.lineno}, "
            f"column {exc.colno}: {exc.msg}); a file of one JSON object per line is JSON Lines: name it .jsonl "
            "(or set format: jsonl on a source)"
        ) from None
    except RecursionError:
        if not strict:
            return None
        raise InputError(f"'{path}' is a JSON array nested too deeply to read") from None
    if field is not None:
        value = _field_records(value, path, field)
    elif isinstance(value, dict):
        _refuse_hidden_lists(value, path)
    if not isinstance(value, list):
        return None if not strict else [_checked(value, text, "record 1", bad_bytes)]
    return [
        _checked(row, json.dumps(row, ensure_ascii=True), f"record {i}", bad_bytes) for i, row in enumerate(value, 1)
    ]


def _field_records(value: Any, path: str, field: str) -> list:
    if not isinstance(value, dict):
        raise InputError(
            f"source field: '{field}' is set, but '{path}' is not a JSON object ({type(value).__name__} at "
            "the top); remove `field:`"
        )
    if field not in value:
        raise InputError(
            f"source field: '{path}' has no top-level key '{field}'; its keys: {', '.join(map(repr, value))}"
        )
    if not isinstance(value[field], list):
        raise InputError(
            f"source field: '{field}' in '{path}' holds {type(value[field]).__name__}, not a list of records"
        )
    return value[field]


def _refuse_hidden_lists(value: dict, path: str) -> None:
    """A JSON object whose values are lists of records (``{"train": [...]}``) is not one record: say so."""
    lists = {
        key: len(v) for key, v in value.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)
    }
    if lists:
        found = ", ".join(f"'{key}' ({n} records)" for key, n in lists.items())
        raise InputError(
            f"'{path}' is a JSON object holding lists of records under {found}; set `field: "
            f"{next(iter(lists))}` on the source to read them (a benchmark file holds the list itself)"
        )


def _csv(stream: BinaryIO, path: str, has_header: bool) -> Iterator[Record]:
    """Rows as they stream: decoded as UTF-8 (BOM dropped), a byte that is not UTF-8 kept as an
    escape that marks its row invalid, so the other rows are still read. Without a header, each
    record is the list of the row's fields."""
    text = io.TextIOWrapper(
        io.BufferedReader(_Readable(stream)), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    reader = csv.reader(text)
    try:
        header = next(reader, None) if has_header else None
        if has_header and header is None:
            return
        repeated = next((name for i, name in enumerate(header) if name in header[:i]), None) if header else None
        start = reader.line_num + 1
        for row in reader:
            where = f"line {start}"
            start = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue  # a blank line is not a row
            raw = ",".join(row)
            if header is None:
                yield _checked(row, raw, where, bad_bytes=bool(_ESCAPED_BYTE.search(raw)))
                continue
            if repeated is not None:
                yield Record(None, raw, where, "duplicate_key", f"column {repeated!r} appears twice in the header")
                continue
            if len(row) != len(header):
                yield Record(None, raw, where, "ragged_row", f"{len(row)} fields, the header has {len(header)}")
                continue
            yield _checked(dict(zip(header, row)), raw, where, bad_bytes=bool(_ESCAPED_BYTE.search(raw)))
    except csv.Error as exc:
        raise InputError(f"'{path}' is not a readable CSV file (line {reader.line_num}: {exc})") from None


class _Readable(io.RawIOBase):
    """Any stream with ``read(n)`` (a decompressor, a pyarrow stream) as a raw stream io can buffer."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _parquet(data: bytes, path: str) -> Iterator[Record]:
    try:
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"'{path}' is not a readable Parquet file: {exc}") from None
    for i, row in enumerate(rows, 1):
        yield Record(row, repr(row), f"record {i}")
