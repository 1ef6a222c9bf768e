"""Refine never destroys files it did not write, and accounts for every input row whatever the bytes.

Unit checks need no Ray; the end-to-end ones share one module-scoped corpus of every awkward
source at once (duplicates-only, all-invalid, empty, blank-only, header-only, bad bytes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from platypus_ray.cli import main
from platypus_ray.core.config import ConfigError, validate_config
from platypus_ray.core.errors import UserError
from platypus_ray.core.outputs import MARKER, check_output, replaced_atomically
from platypus_ray.core.paths import expand_files
from platypus_ray.refine import RefineConfig
from platypus_ray.refine.ledger import LEDGER_COLUMNS

REPO = Path(__file__).resolve().parents[2]
GOOD = [
    {"instruction": text, "output": "Answer."}
    for text in (
        "Write a haiku about the sea.",
        "How do vaccines train the immune system?",
        "Convert 5 miles to kilometres.",
    )
]


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def refine_cfg(tmp_path, sources, output="out", **extra) -> RefineConfig:
    raw = {
        "sources": sources,
        "output": str(tmp_path / output) if output else output,
        "embedding": {"batch_size": 8, "actors": 1},
        **extra,
    }
    return validate_config(RefineConfig, raw)


def test_output_guard_refuses_what_it_could_destroy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text(jsonl(GOOD))
    src = [{"path": str(data / "a.jsonl")}]
    refusals = {
        ".": "is the working directory",
        "": "is empty",
        "~": "is your home folder",
        "/": "is a filesystem root",
        str(data): "holds the input",
        "..": "holds the working directory",
    }
    for output, message in refusals.items():
        with pytest.raises(UserError, match=message):
            check_output(output, "output", inputs=[s["path"] for s in src])
    with pytest.raises(UserError, match="inside the source folder"):
        check_output(str(data / "refined"), "output", source_folders=[str(data)])
    with pytest.raises(UserError, match="inside the folder of the source glob"):
        check_output(str(data / "refined"), "output", source_folders=[str(data / "**" / "*.jsonl")])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match=f"not written by platypus-ray \\(no {MARKER}"):
        check_output(str(foreign), "output")
    (foreign / MARKER).write_text("{}")
    check_output(str(foreign), "output")  # ours from an earlier run: may be replaced
    check_output(str(tmp_path / "new" / "folder"), "output")


def test_refuse_dot_output_from_the_cli_before_ray_starts(tmp_path):
    """The whole user path: one `error:` line, exit 2, every file in the folder untouched."""
    (tmp_path / "a.jsonl").write_text(jsonl(GOOD))
    (tmp_path / "notes.txt").write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "platypus_ray", "refine", "--set", "sources=[{path: a.jsonl}]", "--set", "output=."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "platypus-ray refine: error: output: '.' is the working directory; refusing to replace it; "
        "set output to a new folder (--set output=out/NAME)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "notes.txt").read_text() == "keep me"


def test_leftover_staging_folders_of_killed_runs_are_removed_and_only_ours(tmp_path, capsys):
    ours = tmp_path / ".out.staging-dead1234"
    ours.mkdir()
    (ours / MARKER).write_text("{}")
    theirs = tmp_path / ".out.staging-notours"
    theirs.mkdir()
    with replaced_atomically(str(tmp_path / "out"), "test") as staging:
        (staging / "x").write_text("1")
    assert not ours.exists() and theirs.exists()
    assert f"removing {ours}" in capsys.readouterr().err
    assert (tmp_path / "out" / MARKER).is_file()


def test_literal_path_with_glob_characters_and_finite_numbers(tmp_path):
    literal = tmp_path / "data[1].jsonl"
    literal.write_text(jsonl(GOOD))
    assert expand_files(str(literal), ("jsonl",)) == [str(literal)]
    cfg = refine_cfg(tmp_path, [{"path": str(literal)}])
    assert cfg.sources[0].source_name == "data[1]"
    for key, value, message in (
        ("cpus_per_actor", float("inf"), "a finite"),
        ("cpus_per_actor", float("nan"), "a finite"),
        ("cpus_per_actor", 1e-5, "greater than or equal to 0.0001"),  # Ray's smallest step
        ("cpus_per_actor", 1e300, "less than or equal to 1024"),
        ("actors", 10**6, "less than or equal to 4096"),
    ):
        with pytest.raises(ConfigError, match=f"embedding.{key}: Input should be {message}"):
            refine_cfg(tmp_path, [{"path": str(literal)}], embedding={key: value})
    assert (
        refine_cfg(tmp_path, [{"path": str(literal)}], embedding={"cpus_per_actor": 1e-4}).embedding.cpus_per_actor
        == 1e-4
    )


def test_benchmark_file_errors_name_the_file_and_line(tmp_path):
    from platypus_ray.testsets import BenchmarkConfig, BenchmarkFormatError, load_benchmark

    cases = {
        "bad_bytes.csv": (b"What is 1+1?,1,2,3,4,B\nWhat is caf\xe9?,a,b,c,d,A\n", "mmlu_csv", r"line 2: byte 0xe9"),
        "broken.json": (b'[{"question": "q"},\n {oops}]', "questions", r"is not a valid JSON array \(line 2, column 3"),
        "header_only.csv": (b"question,choices,answer\n", "questions", r"holds no questions items"),
    }
    for name, (data, fmt, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        cfg = BenchmarkConfig(path=str(tmp_path / name), format=fmt)
        with pytest.raises(BenchmarkFormatError, match=message):
            load_benchmark(cfg)
    assert (
        load_benchmark(BenchmarkConfig(path=str(tmp_path / "header_only.csv"), format="questions"), allow_empty=True)
        == []
    )
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfWhat is 1+1?,1,2,3,4,B\n")
    assert (
        load_benchmark(BenchmarkConfig(path=str(tmp_path / "bom.csv"), format="mmlu_csv"))[0].question == "What is 1+1?"
    )


# ---- end to end on real Ray -------------------------------------------------------------

AWKWARD = {  # file name -> bytes; every source at once in one run
    "good.jsonl": jsonl(GOOD).encode(),
    "same_again.jsonl": jsonl(GOOD).encode(),  # adds nothing after exact dedup
    "all_invalid.jsonl": b'{"instruction": 1}\n{"broken\n[1, 2]\n',
    "empty.jsonl": b"",
    "blank_only.jsonl": b"\n  \n\t\n",
    "header_only.csv": b"instruction,input,output\n",
    "mixed.jsonl": b"\xef\xbb\xbf"
    + jsonl([{"instruction": "Say\u2028hi", "output": "hi"}]).encode()
    + b'{"instruction": "caf\xe9", "output": "x"}\n{"instruction": "\\udc00", "output": "x"}\n'
    + b'{"instruction": "a", "instruction": "b", "output": "x"}\n',
}


@pytest.fixture(scope="module")
def awkward_run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("awkward")
    for name, data in AWKWARD.items():
        (root / name).write_bytes(data)
    (root / "bench.jsonl").write_text(json.dumps({"question": "Which planet is known as the red planet?"}) + "\n")
    cfg = validate_config(
        RefineConfig,
        {
            "sources": [{"path": str(root / name), "name": name.split(".")[0]} for name in AWKWARD],
            "benchmarks": [{"path": str(root / "bench.jsonl"), "format": "questions", "name": "bench"}],
            "embedding": {"batch_size": 8, "actors": 1},
            "dedup": {"mode": "clustered"},  # the clustered path end to end, on rows this small one cluster
            "output": str(root / "out"),
        },
    )
    from platypus_ray.refine import run

    return run(cfg), root / "out"


@pytest.mark.slow
def test_every_awkward_source_is_accounted_for(awkward_run):
    result, output = awkward_run
    ledger = pd.read_parquet(output / "ledger")
    stats = json.loads((output / "stats.json").read_text())
    per_source = {name: int((ledger.source == name).sum()) for name in stats["per_source"]}
    assert per_source == {
        "good": 3,
        "same_again": 3,
        "all_invalid": 3,
        "empty": 0,
        "blank_only": 0,
        "header_only": 0,
        "mixed": 4,
    }
    assert list(stats["per_source"]) == [name.split(".")[0] for name in AWKWARD]  # config order, empty ones included
    assert stats["per_source"]["empty"] == {"rows": 0, "kept": 0, "invalid": 0, "removed": {}}
    empty = [f"source '{name}': 0 rows" for name in ("empty", "blank_only", "header_only")]
    assert [w for w in stats["warnings"] if w.endswith(": 0 rows")] == empty
    summary = result.summary()
    assert all(f"refine: WARNING: {w}" in summary for w in empty) and "source header_only: 0 rows, 0 kept" in summary
    assert stats["per_source"]["same_again"]["removed"] == {"exact_duplicate": 3}
    reasons = ledger[ledger.source == "mixed"].reason.tolist()
    assert reasons == ["", "invalid_utf8", "lone_surrogate", "duplicate_key"]
    assert stats["input_rows"] == len(ledger) == 13 and result.kept == 4
    kept = pd.read_parquet(output / "kept")
    assert sorted(kept.id) == sorted(ledger[ledger.status == "kept"].id)
    assert "Say\u2028hi" in kept.instruction.tolist()
    assert stats["dedup"]["mode"] == "clustered" and stats["dedup"]["pair_recall"] == 1.0
    assert stats["dedup"]["certificate"]["holds"] and "semantic dedup certificate holds: 0 pairs" in summary
    assert "semantic dedup decided in 1 rounds of 2 Ray tasks" in summary
    assert "pair recall" in (output / "report.html").read_text()


@pytest.mark.slow
def test_zero_input_rows_still_write_a_complete_ledger(ray_session, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": "Which planet is red?"}) + "\n")
    code = main(
        [
            "refine",
            "--set",
            f"sources=[{{path: {tmp_path / 'empty.jsonl'}}}]",
            "--set",
            f"benchmarks=[{{path: {tmp_path / 'bench.jsonl'}, format: questions}}]",
            "--set",
            f"output={tmp_path / 'out'}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "WARNING: 0 input rows" in out
    assert len(pd.read_parquet(tmp_path / "out" / "ledger")) == 0
    assert list(pd.read_parquet(tmp_path / "out" / "kept").columns) == [
        "id",
        "instruction",
        "input",
        "output",
        "data_source",
    ]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["input_rows"] == 0

    # the same source without benchmarks: the other path to 0 rows named in issue 11
    code = main(
        [
            "refine",
            "--set",
            f"sources=[{{path: {tmp_path / 'empty.jsonl'}, name: empty}}]",
            "--set",
            f"output={tmp_path / 'plain'}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "refine: WARNING: 0 input rows" in out and "refine: WARNING: source 'empty': 0 rows" in out
    plain = tmp_path / "plain"
    assert {p.name for p in plain.iterdir()} >= {
        "kept",
        "ledger",
        "stats.json",
        "review.csv",
        "report.html",
        "config.yaml",
    }
    ledger = pd.read_parquet(plain / "ledger")
    assert len(ledger) == 0 and list(ledger.columns) == LEDGER_COLUMNS
    assert len(pd.read_parquet(plain / "kept")) == 0
    stats = json.loads((plain / "stats.json").read_text())
    assert stats["input_rows"] == stats["kept"] == 0 and stats["benchmark_items"] == {}
    assert stats["per_source"] == {"empty": {"rows": 0, "kept": 0, "invalid": 0, "removed": {}}}


@pytest.mark.slow
def test_unreadable_file_and_empty_benchmark_are_one_error_line(ray_session, tmp_path, capsys):
    (tmp_path / "ok.jsonl").write_text(jsonl(GOOD))
    (tmp_path / "broken.json").write_text('[{"instruction": "a", "output": "b"},\n {oops}]')
    (tmp_path / "empty_bench.csv").write_text("question,answer\n")
    sources = f"sources=[{{path: {tmp_path / 'ok.jsonl'}}}, {{path: {tmp_path / 'broken.json'}}}]"
    assert main(["refine", "--set", sources, "--set", f"output={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "platypus-ray refine: error: '" in err and "broken.json' is not a valid JSON array (line 2, column 3" in err
    bench = f"benchmarks=[{{path: {tmp_path / 'empty_bench.csv'}, format: questions}}]"
    ok_only = f"sources=[{{path: {tmp_path / 'ok.jsonl'}}}]"
    assert main(["refine", "--set", ok_only, "--set", bench, "--set", f"output={tmp_path / 'out'}"]) == 2
    assert "holds no questions items" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
