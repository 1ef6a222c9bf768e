"""Reading and validating source files (no Ray): every row comes out, bad ones with a reason."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from platypus_ray.core.errors import InputError
from platypus_ray.refine.config import ColumnMapping, SourceConfig
from platypus_ray.refine.rows import content_id, dedup_key, embed_text, validate_record
from platypus_ray.refine.sources import SourceFile, list_source_files, parse_source_file


def parse(path, fmt, columns=None):
    mapping = (columns or ColumnMapping()).model_dump()
    return parse_source_file(SourceFile("src", str(path), 0, fmt, mapping)).to_pylist()


def test_jsonl_quarantines_bad_lines_and_skips_blank_ones(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"instruction": "Add", "input": "1 2", "output": "3"}),
                "",
                '{"instruction": "broken", "output": ',
                json.dumps({"instruction": "No output"}),
                json.dumps({"instruction": 7, "output": "x"}),
                json.dumps({"instruction": " \t", "output": "x"}),
                json.dumps(["a", "list"]),
                json.dumps({"instruction": "Say hi", "output": "hi", "input": None}),
            ]
        )
    )
    rows = parse(path, "jsonl")
    assert [r["row_in_file"] for r in rows] == list(range(7))  # the blank line is not a row
    assert [r["reason"] for r in rows] == [
        "",
        "malformed_json",
        "missing_field",
        "not_a_string",
        "empty",
        "not_an_object",
        "",
    ]
    assert rows[1]["detail"].startswith("line 3: malformed JSON")
    assert rows[2]["detail"] == "line 4: no 'output' (source column 'output')"
    assert [r["valid"] for r in rows] == [True, False, False, False, False, False, True]
    assert rows[0]["id"] == content_id("Add", "1 2", "3")
    assert rows[6]["input"] == ""  # null input is an empty input
    assert rows[0]["text_len"] == len("Add 1 2")


def test_json_array_csv_parquet_and_column_mapping(tmp_path):
    records = [
        {"prompt": "Name a fruit", "ctx": "", "answer": "apple"},
        {"prompt": "Name a color", "ctx": "", "answer": ""},
    ]
    mapping = ColumnMapping(instruction="prompt", input="ctx", output="answer")
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.csv").write_text("prompt,ctx,answer\nName a fruit,,apple\nName a color,,\n")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "a.parquet")
    for name, fmt in (("a.json", "json"), ("a.csv", "csv"), ("a.parquet", "parquet")):
        rows = parse(tmp_path / name, fmt, mapping)
        assert [r["valid"] for r in rows] == [True, False], name
        assert rows[0]["instruction"] == "Name a fruit" and rows[0]["output"] == "apple"
        assert rows[1]["reason"] == "empty" and "source column 'answer'" in rows[1]["detail"]


def test_json_file_with_one_object_per_line_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text(
        json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c", "output": "d"})
    )
    assert [r["instruction"] for r in parse(path, "json")] == ["a", "c"]


def test_unreadable_json_array_is_an_input_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"instruction": "a", "output": "b"},')
    with pytest.raises(InputError, match=r"bad.json' is not a valid JSON array \(line 1"):
        parse(path, "json")


def test_folder_source_lists_files_sorted_with_global_ranks(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.jsonl", "a.jsonl", "notes.txt"):
        (tmp_path / "d" / name).write_text("{}\n")
    single = tmp_path / "x.csv"
    single.write_text("instruction,output\n")
    files = list_source_files([SourceConfig(path=str(tmp_path / "d")), SourceConfig(path=str(single), name="x")])
    assert [(f.source, f.path.rsplit("/", 1)[-1], f.file_rank, f.format) for f in files] == [
        ("d", "a.jsonl", 0, "jsonl"),
        ("d", "b.jsonl", 1, "jsonl"),
        ("x", "x.csv", 2, "csv"),
    ]


def test_exact_dedup_key_normalises_case_space_and_unicode():
    assert dedup_key("Hello  World", "") == dedup_key(" hello world ", "")
    assert dedup_key("ﬁne", "") == dedup_key("fine", "")  # NFKC folds the ligature
    assert dedup_key("a", "b") != dedup_key("a b", "")  # instruction/input boundary matters


def test_embed_text_and_validation_defaults():
    assert embed_text("Sum", "1 2") == "Sum 1 2"
    assert embed_text("Sum", "  ") == "Sum"
    fields, reason, _ = validate_record({"instruction": "x", "output": "y"}, ColumnMapping())
    assert fields == {"instruction": "x", "input": "", "output": "y"} and reason == ""
