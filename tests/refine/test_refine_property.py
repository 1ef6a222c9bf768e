"""Whole refine runs on random mixes of sources and benchmarks, inside one Ray session.

Each example is a few ordinary files (JSONL, CSV, a JSON array) among awkward ones (empty,
all invalid, all duplicates, with a byte-order mark), checked against 0, 1 or several
benchmarks, one of which may hold questions equal to training rows. The contract checked:
exit 0, every input row in the ledger exactly once (per source too), kept/ equal to the
ledger's kept rows, a training row equal to a benchmark question never kept, nothing outside
the output and the embedding cache changed.

Texts come from a fixed pool so that the shared embedding cache serves most examples (a run
with every vector cached starts no actor); some examples add a text never seen, which sends
the run through the cache's partial-hit path and the actor pool.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from platypus_ray.cli import main
from platypus_ray.refine import sources as refine_sources

pytestmark = pytest.mark.slow

TOPICS = ["rivers", "volcanoes", "bread", "chess", "satellites", "orchids", "tax law", "violins", "glaciers", "bees"]
POOL = [
    f"{verb} {topic}."
    for verb, topic in itertools.product(["Explain", "Describe the history of", "List three uses of"], TOPICS)
]
QUESTIONS = [f"Which statement about {topic} is true according to the textbook chapter?" for topic in TOPICS]
FRESH = itertools.count()  # texts never seen before, unique in the test session


def _row(text: str, output: str = "An answer.") -> dict:
    return {"instruction": text, "input": "", "output": output}


INVALID = [
    b'{"instruction": ',
    b'{"instruction": "\xff\xfe", "output": "x"}',
    b'{"instruction": "\\ud800", "output": "x"}',
    b'{"output": "a", "output": "b", "instruction": "c"}',
    b"[1, 2]",
    b'{"instruction": " ", "output": "x"}',
    b'{"instruction": 1, "output": "x"}',
    b'{"instruction": "only"}',
]


@st.composite
def ordinary_file(draw):
    """(extension, bytes, number of rows): valid rows from the pool with a few invalid ones."""
    texts = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=8))
    fmt = draw(st.sampled_from(["jsonl", "csv", "json"]))
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["instruction", "input", "output"])
        writer.writerows([t, "", f"Output {i}"] for i, t in enumerate(texts))
        return "csv", out.getvalue().encode(), len(texts)
    rows = [_row(t, f"Output {i}") for i, t in enumerate(texts)]
    if fmt == "json":
        return "json", json.dumps(rows).encode(), len(rows)
    lines = [json.dumps(r).encode() for r in rows] + draw(st.lists(st.sampled_from(INVALID), max_size=3))
    lines = draw(st.permutations(lines))
    return "jsonl", b"\n".join(lines) + b"\n", len(lines)


AWKWARD = {
    "empty": lambda pool_text: (b"", 0),
    "blank": lambda pool_text: (b"\n  \n\n", 0),
    "all_invalid": lambda pool_text: (b"\n".join(INVALID) + b"\n", len(INVALID)),
    "all_duplicate": lambda pool_text: (b"".join(json.dumps(_row(pool_text)).encode() + b"\n" for _ in range(4)), 4),
    "bom": lambda pool_text: (b"\xef\xbb\xbf" + json.dumps(_row(pool_text)).encode() + b"\n", 1),
}


@st.composite
def scenario(draw):
    files = draw(st.lists(ordinary_file(), min_size=1, max_size=3))
    awkward = draw(st.lists(st.sampled_from(sorted(AWKWARD)), min_size=1, max_size=3))
    awkward_files = [("jsonl", *AWKWARD[kind](draw(st.sampled_from(POOL)))) for kind in awkward]
    everything = draw(st.permutations(files + awkward_files))
    n_benchmarks = draw(st.integers(0, 3))
    benchmarks = [
        draw(st.lists(st.sampled_from(QUESTIONS), min_size=1, max_size=4, unique=True)) for _ in range(n_benchmarks)
    ]
    leaked = draw(st.booleans()) and n_benchmarks > 0  # a benchmark question that is also a training row
    fresh = draw(st.integers(0, 4)) == 0
    return everything, benchmarks, leaked, fresh


def _snapshot(root: Path, *skip: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not any(folder in p.parents for folder in skip)
    }


@pytest.fixture(scope="module")
def shared_cache(ray_session, tmp_path_factory):
    """An embedding cache holding every pool text and question (one warm-up run embeds them)."""
    root = tmp_path_factory.mktemp("property-warm")
    (root / "pool.jsonl").write_text("".join(json.dumps(_row(t)) + "\n" for t in POOL + QUESTIONS))
    (root / "bench.jsonl").write_text(
        "".join(json.dumps({"question": q, "choices": ["a", "b"], "answer": 0}) + "\n" for q in QUESTIONS)
    )
    cache = root / "cache"
    assert (
        main(
            [
                "refine",
                "--set",
                f"sources=[{{path: {root / 'pool.jsonl'}}}]",
                "--set",
                f"output={root / 'out'}",
                "--set",
                f"benchmarks=[{{path: {root / 'bench.jsonl'}, format: questions}}]",
                "--set",
                f"embedding.cache={cache}",
                "--set",
                "embedding.actors=1",
            ]
        )
        == 0
    )
    return cache


# The case issue 21 found: one ordinary file, one empty file, a benchmark (a 0-row block met the cache lookup).
@example(
    scenario=(
        [("jsonl", json.dumps(_row(POOL[0])).encode() + b"\n", 1), ("jsonl", b"", 0)],
        [[QUESTIONS[0]]],
        False,
        False,
    )
)
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenario())
def test_refine_on_random_sources_and_benchmarks_accounts_for_every_row(shared_cache, tmp_path_factory, scenario):
    files, benchmarks, leaked, fresh = scenario
    root = tmp_path_factory.mktemp("property")
    sources, expected = [], {}
    for n, (fmt, data, rows) in enumerate(files):
        (root / f"f{n}.{fmt}").write_bytes(data)
        sources.append(f"{{path: {root / f'f{n}.{fmt}'}, name: f{n}}}")
        expected[f"f{n}"] = rows
    extra = [_row(f"Summarize fact number {next(FRESH)} about the property test.")] if fresh else []
    if leaked:
        extra.append(_row(benchmarks[0][0]))
    if extra:
        (root / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extra))
        sources.append(f"{{path: {root / 'extra.jsonl'}, name: extra}}")
        expected["extra"] = len(extra)
    bench_entries = []
    for b, questions in enumerate(benchmarks):
        (root / f"bench{b}.jsonl").write_text(
            "".join(json.dumps({"question": q, "choices": ["a", "b"], "answer": 0}) + "\n" for q in questions)
        )
        bench_entries.append(f"{{path: {root / f'bench{b}.jsonl'}, format: questions, name: bench{b}}}")
    output = root / "out"
    before = _snapshot(root, output)
    with pytest.MonkeyPatch.context() as patch:  # JSONL files past 200 bytes are read in byte-range pieces
        patch.setattr(refine_sources, "PIECE_BYTES", 200)
        code = main(
            [
                "refine",
                "--set",
                f"sources=[{', '.join(sources)}]",
                "--set",
                f"output={output}",
                "--set",
                f"benchmarks=[{', '.join(bench_entries)}]",
                "--set",
                f"embedding.cache={shared_cache}",
                "--set",
                "embedding.actors=1",
            ]
        )
    assert code == 0
    assert _snapshot(root, output) == before  # nothing outside the output (the cache lives elsewhere) changed
    ledger = pd.read_parquet(output / "ledger")
    assert len(ledger) == sum(expected.values())
    assert ledger.groupby("source").size().to_dict() == {name: rows for name, rows in expected.items() if rows}
    assert not ledger.duplicated(["source", "source_index"]).any()
    kept = pd.read_parquet(output / "kept")
    assert sorted(kept.id) == sorted(ledger[ledger.status == "kept"].id)
    stats = json.loads((output / "stats.json").read_text())
    assert stats["input_rows"] == len(ledger) and set(stats["per_source"]) == set(expected)
    if leaked:
        assert benchmarks[0][0] not in set(kept.instruction)
