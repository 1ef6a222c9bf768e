"""The one reader (``core/readers.py``): a training source and a benchmark fed the same bytes name
the same row with the same reason; benchmarks get the source's rules (duplicate keys refused,
compression, header-less CSV)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma

import pytest

from platypus_ray.core.readers import format_of, read_records
from platypus_ray.refine.config import ColumnMapping
from platypus_ray.refine.sources import SourceFile, parse_source_file
from platypus_ray.testsets import BenchmarkConfig, BenchmarkFormatError, load_benchmark

BOM = b"\xef\xbb\xbf"
ROW = {"question": "Which planet is red?", "instruction": "Which planet is red?", "output": "Mars"}
GOOD = json.dumps(ROW).encode() + b"\n"
CSV_HEADER = b"question,instruction,output\n"
CSV_GOOD = b"Which planet is red?,Which planet is red?,Mars\n"

# name -> (file name, bytes, (where, reason) of the one bad row, or None when every row is good)
CASES = {
    "bom": ("q.jsonl", BOM + GOOD + GOOD, None),
    "bom_then_malformed": ("q.jsonl", BOM + GOOD + b'{"question": "cut\n', ("line 2", "malformed_json")),
    "bad_utf8": ("q.jsonl", GOOD + b'{"question": "caf\xe9", "output": "x"}\n', ("line 2", "invalid_utf8")),
    "duplicate_key": ("q.jsonl", GOOD + b'{"question": "a", "question": "b"}\n', ("line 2", "duplicate_key")),
    "malformed_line": ("q.jsonl", GOOD + b"\n{broken\n", ("line 3", "malformed_json")),
    "gzip": ("q.jsonl.gz", gzip.compress(GOOD + GOOD + b'{"a": 1, "a": 2}\n'), ("line 3", "duplicate_key")),
    "bz2": ("q.jsonl.bz2", bz2.compress(GOOD + b"{oops\n"), ("line 2", "malformed_json")),
    "xz": ("q.json.xz", lzma.compress(b"[" + GOOD + b', {"q": 1, "q": 2}]'), ("record 2", "duplicate_key")),
    "json_array_bad_utf8": ("q.json", b"[" + GOOD + b', {"question": "\xff"}]', ("record 2", "invalid_utf8")),
    "csv_bad_utf8": ("q.csv", CSV_HEADER + CSV_GOOD + b"caf\xe9,x,y\n", ("line 3", "invalid_utf8")),
    "csv_ragged": ("q.csv", BOM + CSV_HEADER + CSV_GOOD + b"only,two\n", ("line 3", "ragged_row")),
    "csv_duplicate_column": ("q.csv", b"question,question,output\na,b,c\n", ("line 2", "duplicate_key")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_source_and_a_benchmark_name_the_same_row_with_the_same_reason(tmp_path, case):
    name, data, bad = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    source = SourceFile("src", str(path), 0, format_of(str(path)), ColumnMapping().model_dump())
    rows = parse_source_file(source).to_pylist()
    benchmark = BenchmarkConfig(path=str(path), format="questions", name="bench")
    if bad is None:
        assert [r["valid"] for r in rows] == [True, True]
        assert [i.question for i in load_benchmark(benchmark)] == [ROW["question"]] * 2
        return
    where, reason = bad
    [flagged] = [r for r in rows if r["reason"] == reason]
    assert flagged["detail"].startswith(f"{where}: ")
    with pytest.raises(BenchmarkFormatError) as refused:
        load_benchmark(benchmark)
    # the benchmark's error holds the ledger's detail word for word, and its reason
    assert f"{path}, {flagged['detail']} ({reason}); fix the file" in str(refused.value)


def test_a_benchmark_with_a_duplicated_key_is_refused(tmp_path):
    path = tmp_path / "arc.jsonl"
    first = {"id": "Q1", "question": "Sky?", "choices": {"text": ["blue", "red"], "label": ["A", "B"]}}
    path.write_text(json.dumps({**first, "answerKey": "A"}) + "\n" + json.dumps(first)[:-1] + ', "id": "Q2"}\n')
    with pytest.raises(BenchmarkFormatError, match=r"arc.jsonl, line 2: key 'id' appears more than once"):
        load_benchmark(BenchmarkConfig(path=str(path), format="arc_jsonl"))


def test_compressed_mmlu_without_a_header_keeps_multiline_fields(tmp_path):
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "a_test.csv.zst").write_bytes(_zstd(b'"A passage\nover two lines?",w,x,y,z,D\nWho?,a,b,c,d,A\n'))
    items = load_benchmark(BenchmarkConfig(path=str(folder), format="mmlu_csv"))
    assert [(i.question, i.answer) for i in items] == [("A passage\nover two lines?", 3), ("Who?", 0)]


def test_header_less_csv_records_are_field_lists_numbered_by_line():
    data = b'q1,a,b,c,d,A\n\n"two\nlines",a,b,c,d,B\nbad \xe9,a,b,c,d,C\n'
    records = list(read_records(io.BytesIO(data), "csv", "x.csv", header=False))
    assert [(r.where, r.value, r.reason) for r in records] == [
        ("line 1", ["q1", "a", "b", "c", "d", "A"], ""),
        ("line 3", ["two\nlines", "a", "b", "c", "d", "B"], ""),
        ("line 5", None, "invalid_utf8"),
    ]
    assert records[2].detail == "byte 0xe9 is not UTF-8"


def test_format_comes_from_the_extension_under_the_compression_suffix():
    assert [format_of(p) for p in ("a.jsonl.gz", "b.CSV", "c.json.zst", "d.parquet", "e.txt", "f.gz")] == [
        "jsonl",
        "csv",
        "json",
        "parquet",
        None,
        None,
    ]


def _zstd(data: bytes) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as stream:
        stream.write(data)
    return sink.getvalue().to_pybytes()
