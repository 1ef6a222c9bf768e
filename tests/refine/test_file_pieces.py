"""A large JSONL file read as byte-range pieces: the same rows, details and order as read whole."""

from __future__ import annotations

import json
import random

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.refine.sources import SourceFile, parse_source_file, split_large_files

LINES = [
    json.dumps({"instruction": "say hi", "output": "hi"}),
    json.dumps({"instruction": "é ü 中", "output": "x" * 40}),
    "",
    "   ",
    "{broken",
    json.dumps({"instruction": "", "output": "empty"}),
    json.dumps([1, 2]),
    '{"instruction": "a", "instruction": "b", "output": "dup key"}',
    "\r",
    json.dumps({"output": "no instruction"}),
]


def whole_and_pieces(tmp_path, body: bytes, piece_bytes: int) -> tuple[pa.Table, pa.Table, int]:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(body)
    sf = SourceFile("s", str(path), 0, "jsonl", {"instruction": "instruction", "input": "input", "output": "output"})
    whole = parse_source_file(sf)
    pieces = split_large_files([sf], piece_bytes)
    assert [p.file_rank for p in pieces] == list(range(len(pieces)))
    parts = pa.concat_tables([parse_source_file(p) for p in pieces])
    return whole, parts, len(pieces)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    rows=st.integers(1, 120),
    piece_bytes=st.integers(1, 400),
    bom=st.booleans(),
    crlf=st.booleans(),
    final_newline=st.booleans(),
)
def test_pieces_read_every_row_once_with_its_line_number(
    tmp_path_factory, seed, rows, piece_bytes, bom, crlf, final_newline
):
    rng = random.Random(seed)
    lines = [
        json.dumps({"instruction": f"row {i}", "output": "o"}) if i == 0 else rng.choice(LINES) for i in range(rows)
    ]
    end = "\r\n" if crlf else "\n"
    body = ("\ufeff" if bom else "") + end.join(lines) + (end if final_newline else "")
    whole, parts, n_pieces = whole_and_pieces(tmp_path_factory.mktemp("p"), body.encode(), piece_bytes)
    assert n_pieces == (1 if len(body.encode()) <= piece_bytes else -(-len(body.encode()) // piece_bytes))
    columns = [c for c in whole.column_names if c not in ("file_rank", "row_in_file")]
    assert parts.select(columns).to_pylist() == whole.select(columns).to_pylist()


def test_a_json_array_in_a_jsonl_file_is_not_split(tmp_path):
    body = json.dumps([{"instruction": f"q{i}", "output": "a"} for i in range(50)]).encode()
    whole, parts, n_pieces = whole_and_pieces(tmp_path, body, 64)
    assert n_pieces == 1 and parts.num_rows == whole.num_rows == 50


def test_a_file_gone_before_the_split_is_left_whole_for_its_read_task_to_report(tmp_path):
    sf = SourceFile("s", str(tmp_path / "gone.jsonl"), 0, "jsonl", {})
    assert split_large_files([sf], 1) == [sf]


@settings(max_examples=80, deadline=None)
@given(
    body=st.binary(max_size=200).map(lambda b: b.replace(b"x", b"\n")),
    chunk=st.integers(1, 50),
    cuts=st.lists(st.integers(0, 220), max_size=6),
)
def test_newlines_before_each_offset_match_a_count(tmp_path_factory, body, chunk, cuts):
    from platypus_ray.refine.sources import _newlines_before

    path = tmp_path_factory.mktemp("n") / "f.jsonl"
    path.write_bytes(body)
    offsets = sorted(cuts)
    assert _newlines_before(str(path), offsets, chunk) == [body[:offset].count(b"\n") for offset in offsets]
