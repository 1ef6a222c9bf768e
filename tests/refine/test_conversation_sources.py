"""Conversation sources (OpenAI messages, ShareGPT) through the parser, no Ray: every file format
gives the same rows, every malformed conversation one invalid reason naming its turn."""

from __future__ import annotations

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from platypus_ray.refine.config import ColumnMapping
from platypus_ray.refine.conversations import validate_conversation
from platypus_ray.refine.rows import content_id, conversation_dedup_key, dedup_key
from platypus_ray.refine.sources import SourceFile, parse_source_file

TALK = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Apple."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Pear."},
]
ONE = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."}]
SHAREGPT_NAMES = {"system": "system", "user": "human", "assistant": "gpt"}


def sharegpt(messages):
    return [{"from": SHAREGPT_NAMES[m["role"]], "value": m["content"]} for m in messages]


def parse(path, fmt, shape="auto", columns=None):
    mapping = (columns or ColumnMapping()).model_dump()
    return parse_source_file(SourceFile("src", str(path), 0, fmt, mapping, shape=shape)).to_pylist()


def write(path, records, fmt):
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
        return
    text = json.dumps(records) if fmt == "json" else "".join(json.dumps(r) + "\n" for r in records)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix)
    if opener:
        with opener(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)


@pytest.mark.parametrize("name", ["a.jsonl", "a.json", "a.parquet", "a.jsonl.gz", "a.json.bz2"])
def test_messages_and_sharegpt_in_every_format_give_the_same_rows(tmp_path, name):
    fmt = name.split(".")[1]
    (tmp_path / "m").mkdir()
    (tmp_path / "s").mkdir()
    write(tmp_path / "m" / name, [{"messages": TALK}, {"messages": ONE}], fmt)
    write(tmp_path / "s" / name, [{"conversations": sharegpt(TALK)}, {"conversations": sharegpt(ONE)}], fmt)
    messages, shared = parse(tmp_path / "m" / name, fmt), parse(tmp_path / "s" / name, fmt)
    drop = ("file",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in messages] == [
        {k: v for k, v in r.items() if k not in drop} for r in shared
    ]
    talk, one = messages
    assert talk["valid"] and talk["messages"] == TALK and talk["instruction"] is None
    assert talk["dedup_key"] == conversation_dedup_key(["Name a fruit.", "Another?"])
    assert talk["text_len"] == len("Name a fruit.\nAnother?") and talk["output_len"] == len("Apple.Pear.")
    # one exchange is the Alpaca row: its columns, id and exact-dedup key
    assert (one["instruction"], one["input"], one["output"]) == ("Name a color.", "", "Red.")
    assert one["id"] == content_id("Name a color.", "", "Red.")
    assert one["dedup_key"] == dedup_key("Name a color.", "")


def test_shape_key_and_mapped_turn_keys_and_roles(tmp_path):
    path = tmp_path / "chat.jsonl"
    turns = [{"speaker": "asker", "text": "Hi?"}, {"speaker": "bot", "text": "Hello."}]
    write(path, [{"dialog": turns}], "jsonl")
    columns = ColumnMapping(
        messages="dialog", role="speaker", content="text", roles={"asker": "user", "bot": "assistant"}
    )
    (row,) = parse(path, "jsonl", shape="messages", columns=columns)
    assert row["valid"] and row["messages"] == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    (alpaca,) = parse(path, "jsonl", shape="alpaca")  # the shape key wins over detection
    assert alpaca["reason"] == "missing_field"


BAD = [
    ([{"role": "user", "content": "Hi"}], "no_assistant_turn", "turn 1"),
    (ONE + [{"role": "user", "content": "And?"}], "ends_with_user", "turn 3 (user)"),
    ([ONE[0], {"role": "assistant", "content": "  "}], "empty", "turn 2 (assistant)"),
    ([ONE[0], {"role": "robot", "content": "x"}], "unknown_role", "turn 2: role 'robot'"),
    ([ONE[0], {"role": "assistant", "content": ["x"]}], "not_a_string", "turn 2 (assistant): 'content' is list"),
    ([ONE[0], {"role": "tool", "content": "42"}], "tool_turn", "turn 2: tool turns ('tool')"),
    ([ONE[0], ONE[0], ONE[1]], "turn_order", "turn 2 (user): expected assistant"),
    (ONE + [{"role": "system", "content": "late"}], "turn_order", "turn 3 (system)"),
    ([ONE[0], "Red."], "malformed_turn", "turn 2 is a str"),
    ([ONE[0], {"role": "assistant", "content": "\ud800"}], "lone_surrogate", "turn 2 (assistant)"),
    ([], "empty", "no turns"),
]


@pytest.mark.parametrize("turns, reason, detail", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_each_malformed_conversation_is_one_reason_naming_the_turn(turns, reason, detail):
    messages, got, text = validate_conversation({"messages": turns}, "messages", ColumnMapping())
    assert messages is None and got == reason and detail in text


def test_empty_system_prompt_is_dropped_and_missing_list_is_invalid():
    messages, _, _ = validate_conversation(
        {"messages": [{"role": "system", "content": ""}, *ONE]}, "messages", ColumnMapping()
    )
    assert messages == ONE
    assert validate_conversation({"messages": "hi"}, "messages", ColumnMapping())[1] == "not_a_list"
    assert validate_conversation({"other": 1}, "sharegpt", ColumnMapping())[1] == "missing_field"


def test_invalid_rows_in_a_conversation_file_keep_their_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": ONE}) + "\n{broken\n" + json.dumps({"messages": ONE[:1]}) + "\n")
    rows = parse(path, "jsonl")
    assert [r["reason"] for r in rows] == ["", "malformed_json", "no_assistant_turn"]
    assert rows[2]["detail"] == "line 3: turn 1: no assistant turn in the conversation"
    assert rows[2]["messages"] is None and rows[2]["conversation"] is False


def test_the_shipped_chat_sample_is_its_generator_output_and_parses(tmp_path):
    from platypus_ray.samples import CHAT, chat_rows

    assert CHAT.read_text() == "\n".join(chat_rows()) + "\n"  # regenerate: python -m platypus_ray.samples
    rows = parse(CHAT, "jsonl")
    assert sorted(r["reason"] for r in rows if not r["valid"]) == ["no_assistant_turn", "tool_turn"]
    assert {len(r["messages"]) for r in rows if r["valid"]} == {
        2,
        3,
        4,
        5,
        6,
        7,
    }  # 1-3 exchanges, some with a system prompt


def test_a_role_that_is_not_a_string_is_an_unknown_role_not_a_crash():
    for role in (["user"], {"name": "user"}, 7, None):
        messages, reason, detail = validate_conversation(
            {"messages": [{"role": role, "content": "Hi"}, ONE[1]]}, "messages", ColumnMapping()
        )
        assert messages is None and reason == "unknown_role" and detail.startswith("turn 1: role "), (role, detail)


def test_a_file_s_shape_comes_from_its_first_records_not_one(tmp_path):
    from platypus_ray.refine.conversations import detect_shape

    columns = ColumnMapping()
    alpaca_with_extra = {"instruction": "Name a fruit.", "output": "Apple.", "messages": ONE}
    assert detect_shape([alpaca_with_extra] * 3, columns) == "alpaca"  # a messages key beside them is data
    broken_first = [{"msgs": ONE}] + [{"messages": ONE}] * 4
    assert detect_shape(broken_first, columns) == "messages"  # one malformed head does not decide the file
    assert detect_shape([], columns) == "alpaca"
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in broken_first * 20))
    rows = parse(path, "jsonl")
    assert [r["reason"] for r in rows[:5]] == ["missing_field", "", "", "", ""]


def test_every_piece_of_a_split_file_takes_the_file_s_shape(tmp_path):
    """Pieces of a large JSONL start anywhere; the file's shape is settled once, from its head."""
    from platypus_ray.refine.sources import split_large_files

    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"messages": ONE})] * 40 + [json.dumps({"instruction": "x", "output": "y"})] * 40
    path.write_text("\n".join(lines) + "\n")
    pieces = split_large_files([SourceFile("src", str(path), 0, "jsonl", ColumnMapping().model_dump())], 256)
    assert len(pieces) > 4 and {p.shape for p in pieces} == {"messages"}
    assert len({p.byte_range for p in pieces}) == len(pieces)
