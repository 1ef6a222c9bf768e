"""Reading whatever bytes a source holds (no Ray): every row comes out once, bad ones with a reason."""

from __future__ import annotations

import json

import pytest

from platypus_ray.core.errors import InputError
from platypus_ray.refine.config import ColumnMapping
from platypus_ray.refine.sources import SourceFile, parse_source_file

BOM = b"\xef\xbb\xbf"


def parse_bytes(tmp_path, data: bytes, fmt: str, name: str | None = None):
    path = tmp_path / (name or f"src.{fmt}")
    path.write_bytes(data)
    return parse_source_file(SourceFile("src", str(path), 0, fmt, ColumnMapping().model_dump())).to_pylist()


def line(instruction: str, output: str = "out", **extra) -> str:
    return json.dumps({"instruction": instruction, "output": output, **extra}, ensure_ascii=False)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path, separator):
    text = "\n".join([line(f"first{separator}half"), line("second")])
    rows = parse_bytes(tmp_path, text.encode(), "jsonl")
    assert [r["valid"] for r in rows] == [True, True]
    assert rows[0]["instruction"] == f"first{separator}half"


def test_bom_is_dropped_in_jsonl_json_and_csv(tmp_path):
    assert [r["valid"] for r in parse_bytes(tmp_path, BOM + (line("a") + "\n" + line("b")).encode(), "jsonl")] == [
        True,
        True,
    ]
    array = BOM + json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]).encode()
    assert [r["valid"] for r in parse_bytes(tmp_path, array, "json")] == [True, True]
    csv_rows = parse_bytes(tmp_path, BOM + b"instruction,output\na,b\nc,d\n", "csv")
    assert [r["instruction"] for r in csv_rows] == ["a", "c"] and all(r["valid"] for r in csv_rows)


def test_one_bad_utf8_byte_costs_one_line_with_its_number(tmp_path):
    data = b"\n".join([line("good").encode(), b'{"instruction": "caf\xe9", "output": "x"}', line("also good").encode()])
    rows = parse_bytes(tmp_path, data, "jsonl")
    assert [r["reason"] for r in rows] == ["", "invalid_utf8", ""]
    assert rows[1]["detail"].startswith("line 2: byte 0xe9")


def test_bad_utf8_in_csv_and_json_array_quarantines_only_those_rows(tmp_path):
    rows = parse_bytes(tmp_path, b"instruction,output\nfine,yes\ncaf\xe9,no\nalso,yes\n", "csv")
    assert [r["reason"] for r in rows] == ["", "invalid_utf8", ""]
    assert rows[1]["detail"].startswith("line 3:")
    array = b'[{"instruction": "a", "output": "b"}, {"instruction": "\xff", "output": "c"}]'
    assert [r["reason"] for r in parse_bytes(tmp_path, array, "json")] == ["", "invalid_utf8"]


def test_lone_surrogate_and_duplicate_keys_are_quarantined(tmp_path):
    data = "\n".join(
        [
            '{"instruction": "bad \\ud800 half", "output": "x"}',
            '{"instruction": "first", "instruction": "second", "output": "x"}',
            '{"instruction": "pair \\ud83d\\ude00 ok", "output": "x"}',
        ]
    )
    rows = parse_bytes(tmp_path, data.encode(), "jsonl")
    assert [r["reason"] for r in rows] == ["lone_surrogate", "duplicate_key", ""]
    assert rows[1]["detail"] == "line 2: key 'instruction' appears more than once"
    assert rows[2]["instruction"] == "pair \U0001f600 ok"
    header = parse_bytes(tmp_path, b"instruction,output,output\na,b,c\n", "csv")
    assert header[0]["reason"] == "duplicate_key"


def test_json_array_in_a_jsonl_file_is_read_as_an_array(tmp_path):
    data = json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}], indent=2).encode()
    rows = parse_bytes(tmp_path, data, "jsonl")
    assert [r["instruction"] for r in rows] == ["a", "c"]
    # a first line that is an array but no whole-file array: lines, as JSONL means
    rows = parse_bytes(tmp_path, ("[1, 2]\n" + line("x")).encode(), "jsonl")
    assert [r["reason"] for r in rows] == ["not_an_object", ""]


def test_ragged_csv_rows_crlf_and_deep_nesting(tmp_path):
    rows = parse_bytes(tmp_path, b'instruction,output\r\na,b\r\nonly\r\n"multi\r\nline",ok\r\n', "csv")
    assert [r["reason"] for r in rows] == ["", "ragged_row", ""]
    assert rows[2]["instruction"] == "multi\r\nline"
    deep = ("[" * 100_000 + "]" * 100_000 + "\n" + line("fine")).encode()
    assert [r["reason"] for r in parse_bytes(tmp_path, deep, "jsonl", "deep.jsonl")] == ["malformed_json", ""]


def test_broken_json_array_is_an_input_error_with_line_and_column(tmp_path):
    with pytest.raises(InputError, match=r"broken.json' is not a valid JSON array \(line 2, column"):
        parse_bytes(tmp_path, b'[{"instruction": "a", "output": "b"},\n  {oops}]', "json", "broken.json")
