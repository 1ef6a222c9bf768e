"""Benchmark loaders: every supported format, and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from platypus_ray.testsets import BenchmarkConfig, BenchmarkFormatError, load_benchmark

MMLU_ROWS = 'What is 2+2?,3,4,5,6,B\n"A passage\nwith a newline. Which?",w,x,y,z,D\n'


def test_mmlu_folder_reads_all_csv_files_with_multiline_fields(tmp_path):
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "algebra_test.csv").write_text(MMLU_ROWS)
    (tmp_path / "mmlu" / "history_test.csv").write_text("Who?,a,b,c,d,A\n")
    items = load_benchmark(BenchmarkConfig(path=str(tmp_path / "mmlu"), format="mmlu_csv"))
    assert [i.id for i in items] == ["mmlu/algebra_test:0", "mmlu/algebra_test:1", "mmlu/history_test:0"]
    assert items[0].choices == ["3", "4", "5", "6"] and items[0].answer == 1
    assert items[1].question == "A passage\nwith a newline. Which?" and items[1].answer == 3


def test_mmlu_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "x_test.csv"
    path.write_text(MMLU_ROWS + "Only three,fields,here\n")
    with pytest.raises(BenchmarkFormatError, match=r"x_test.csv, line 4: not a mmlu_csv row \(expected 6 fields"):
        load_benchmark(BenchmarkConfig(path=str(path), format="mmlu_csv"))


def test_arc_both_layouts(tmp_path):
    path = tmp_path / "arc.jsonl"
    path.write_text(
        json.dumps(
            {
                "id": "Q1",
                "question": {
                    "stem": "Sky color?",
                    "choices": [{"text": "blue", "label": "A"}, {"text": "red", "label": "B"}],
                },
                "answerKey": "A",
            }
        )
        + "\n"
        + json.dumps(
            {
                "id": "Q2",
                "question": "Grass color?",
                "choices": {"text": ["red", "green"], "label": ["1", "2"]},
                "answerKey": "2",
            }
        )
        + "\n"
    )
    items = load_benchmark(BenchmarkConfig(path=str(path), format="arc_jsonl", name="arc"))
    assert [(i.id, i.question, i.answer) for i in items] == [("arc/Q1", "Sky color?", 0), ("arc/Q2", "Grass color?", 1)]


def test_hellaswag_truthfulqa_and_questions(tmp_path):
    hs = tmp_path / "hs.jsonl"
    hs.write_text(json.dumps({"ind": 7, "ctx": "A man is", "endings": ["a", "b", "c", "d"], "label": "2"}) + "\n")
    tq = tmp_path / "TruthfulQA.csv"
    tq.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        "A,B,Is the earth flat?,No,No; it is round,Yes; It is flat,src\n"
    )
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"question": "Pick B", "choices": ["x", "y"], "answer": "B"}) + "\n")
    [h] = load_benchmark(BenchmarkConfig(path=str(hs), format="hellaswag_jsonl"))
    [t] = load_benchmark(BenchmarkConfig(path=str(tq), format="truthfulqa_csv"))
    [q] = load_benchmark(BenchmarkConfig(path=str(qs), format="questions"))
    assert (h.id, h.question, h.answer) == ("hs/7", "A man is", 2)
    assert t.choices == ["No", "Yes", "It is flat"] and t.answer == 0
    assert (q.choices, q.answer) == (["x", "y"], 1)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "ok"}) + "\n\n{broken\n")
    with pytest.raises(BenchmarkFormatError, match=r"q.jsonl, line 3: malformed JSON"):
        load_benchmark(BenchmarkConfig(path=str(path), format="questions"))
    path.write_text(json.dumps({"question": "ok"}) + "\n" + json.dumps({"prompt": "no question"}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"q.jsonl, line 2: not a questions row \(needs a string `question`"):
        load_benchmark(BenchmarkConfig(path=str(path), format="questions"))


def test_lone_surrogate_and_record_numbers_name_file_and_place(tmp_path):
    import pandas as pd

    def refused(name: str, data: str, message: str) -> None:
        (tmp_path / name).write_text(data)
        with pytest.raises(BenchmarkFormatError, match=message):
            load_benchmark(BenchmarkConfig(path=str(tmp_path / name), format="questions"))

    ok = json.dumps({"question": "ok"})
    # json.dumps writes the escape \ud800 (ASCII): valid JSON, but the text it decodes to is not valid Unicode
    bad = json.dumps({"question": "bad \ud800 q"})
    refused("q.jsonl", ok + "\n" + bad + "\n", r"q.jsonl, line 2: the question holds a lone UTF-16 surrogate")
    refused(
        "c.jsonl",
        json.dumps({"question": "q", "choices": ["a", "b\udc00"]}) + "\n",
        r"c.jsonl, line 1: the choice 2 holds",
    )
    refused("s.json", f"[{ok},\n {bad}]", r"s.json, record 2: the question holds a lone UTF-16 surrogate")
    refused("a.json", f"[{ok},\n {ok}, " + json.dumps({"question": 7}) + "]", r"a.json, record 3: not a questions row")
    pd.DataFrame({"question": ["ok", ""]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(BenchmarkFormatError, match=r"p.parquet, record 2: empty question"):
        load_benchmark(BenchmarkConfig(path=str(tmp_path / "p.parquet"), format="questions"))
