"""Property tests: random mixes of valid rows, every awkward case and random bytes.

The generator knows what each row it writes must become (kept or invalid, and why), so the
parser is checked row by row without Ray over many examples; a few whole refine runs then
check the user-visible contract: exit 0 or 2 (never a traceback), every row in the ledger
once, kept/ equal to the ledger's kept rows, nothing outside the output folder changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from platypus_ray.cli import main
from platypus_ray.refine.config import ColumnMapping
from platypus_ray.refine.sources import SourceFile, parse_source_file

WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)


def _valid(words: str) -> dict:
    return {"instruction": f"Task {words}", "output": f"Result {words}"}


# kind -> (JSONL line bytes, expected reason); every line is non-blank, so it is exactly one row
JSONL_KINDS = {
    "valid": lambda w: (json.dumps(_valid(w)).encode(), ""),
    "separator": lambda w: (json.dumps(_valid(w + "\u2028\u0085"), ensure_ascii=False).encode(), ""),
    "malformed": lambda w: (b'{"instruction": ' + json.dumps(w).encode(), "malformed_json"),
    "bad_utf8": lambda w: (b'{"instruction": "\xff\xfe", "output": "x"}', "invalid_utf8"),
    "surrogate": lambda w: (b'{"instruction": "\\ud800", "output": "x"}', "lone_surrogate"),
    "duplicate_key": lambda w: (b'{"output": "a", "output": "b", "instruction": "c"}', "duplicate_key"),
    "not_object": lambda w: (json.dumps([w]).encode(), "not_an_object"),
    "missing": lambda w: (json.dumps({"instruction": w}).encode(), "missing_field"),
    "empty": lambda w: (json.dumps({"instruction": " ", "output": w}).encode(), "empty"),
    "not_string": lambda w: (json.dumps({"instruction": 1, "output": w}).encode(), "not_a_string"),
}
RANDOM_LINE = st.binary(min_size=1, max_size=30).filter(
    lambda b: b"\n" not in b and b.strip() and b.strip()[:1] != b"["
)


@st.composite
def jsonl_file(draw):
    """(bytes, expected reasons); the first line is valid so the file never reads as one JSON array."""
    kinds = ["valid"] + draw(st.lists(st.sampled_from(sorted(JSONL_KINDS) + ["random"]), max_size=12))
    lines, reasons = [], []
    for kind in kinds:
        if kind == "random":
            lines.append(draw(RANDOM_LINE))
            reasons.append(None)  # whatever it parses as, it is one row
        else:
            line, reason = JSONL_KINDS[kind](draw(WORDS))
            lines.append(line)
            reasons.append(reason)
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from([b"", b"  ", b"\t", b"\r"])))  # blank lines are not rows
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    return bom + ending.join(lines) + ending, reasons


@st.composite
def csv_file(draw):
    rows = draw(st.lists(st.sampled_from(["valid", "empty", "ragged", "bad_utf8"]), max_size=8))
    text, reasons = io.StringIO(), []
    writer = csv.writer(text)
    writer.writerow(["instruction", "input", "output"])
    for kind in rows:
        w = draw(WORDS)
        row = {
            "valid": [f"Task {w}", "", "x"],
            "empty": [f"Task {w}", "", " "],
            "ragged": [w],
            "bad_utf8": ["\udcff", "", "x"],
        }[kind]
        writer.writerow(row)
        reasons.append({"valid": "", "empty": "empty", "ragged": "ragged_row", "bad_utf8": "invalid_utf8"}[kind])
    return text.getvalue().encode("utf-8", "surrogateescape"), reasons


@st.composite
def json_array_file(draw):
    kinds = draw(st.lists(st.sampled_from(["valid", "not_object", "surrogate", "duplicate_key"]), max_size=8))
    texts = {
        "valid": lambda w: json.dumps(_valid(w)),
        "not_object": lambda w: json.dumps(w),
        "surrogate": lambda w: '{"instruction": "\\udfff", "output": "x"}',
        "duplicate_key": lambda w: '{"instruction": "a", "instruction": "b", "output": "x"}',
    }
    reasons = {
        "valid": "",
        "not_object": "not_an_object",
        "surrogate": "lone_surrogate",
        "duplicate_key": "duplicate_key",
    }
    return ("[" + ",\n ".join(texts[k](draw(WORDS)) for k in kinds) + "]").encode(), [reasons[k] for k in kinds]


ANY_FILE = st.one_of(
    jsonl_file().map(lambda f: ("jsonl", *f)),
    csv_file().map(lambda f: ("csv", *f)),
    json_array_file().map(lambda f: ("json", *f)),
)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(generated=ANY_FILE)
def test_every_generated_row_comes_out_once_with_its_reason(tmp_path, generated):
    fmt, data, expected = generated
    path = tmp_path / f"fuzz.{fmt}"
    path.write_bytes(data)
    rows = parse_source_file(SourceFile("fuzz", str(path), 0, fmt, ColumnMapping().model_dump())).to_pylist()
    assert len(rows) == len(expected)
    for row, reason in zip(rows, expected):
        if reason is not None:
            assert row["reason"] == reason, (row, data)
        assert row["valid"] == (row["reason"] == ""), row
        if not row["valid"]:
            assert row["detail"].startswith(("line ", "record ")), row


def _snapshot(root: Path, *skip: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not any(folder in p.parents for folder in skip)
    }


@pytest.mark.slow
@settings(
    max_examples=2,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(files=st.lists(ANY_FILE, min_size=1, max_size=3), broken=st.booleans())
def test_refine_on_random_files_accounts_for_every_row(ray_session, tmp_path_factory, files, broken):
    root = tmp_path_factory.mktemp("fuzz")
    sources = []
    for n, (fmt, data, _) in enumerate(files):
        (root / f"f{n}.{fmt}").write_bytes(data)
        sources.append(f"{{path: {root / f'f{n}.{fmt}'}, name: f{n}}}")
    if broken:
        (root / "broken.json").write_bytes(b'[{"instruction": "a", "output": "b"},\n {oops')
        sources.append(f"{{path: {root / 'broken.json'}}}")
    output = root / "out"
    cache = root / "embedding-cache"  # beside the output: the one other folder refine writes (only adds files)
    before = _snapshot(root, output, cache)
    code = main(
        [
            "refine",
            "--set",
            f"sources=[{', '.join(sources)}]",
            "--set",
            f"output={output}",
            "--set",
            "embedding.actors=1",
        ]
    )
    assert code == (2 if broken else 0)
    assert _snapshot(root, output, cache) == before  # nothing outside the output and the cache changed
    if broken:
        assert not output.exists()
        return
    ledger = pd.read_parquet(output / "ledger")
    assert len(ledger) == sum(len(expected) for _, _, expected in files)
    assert ledger.groupby("source").size().to_dict() == {f"f{n}": len(e) for n, (_, _, e) in enumerate(files) if e}
    assert sorted(pd.read_parquet(output / "kept").id) == sorted(ledger[ledger.status == "kept"].id)
