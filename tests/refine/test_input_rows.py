"""Exact dedup as a shuffle of tasks over the input blocks: the same decisions however the rows are
cut into blocks and however many reducers own the keys, and the same as a plain reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.refine import input_rows
from platypus_ray.refine.config import ColumnMapping
from platypus_ray.refine.input_rows import INVALID, KEPT, REMOVED, exact_winners
from platypus_ray.refine.sources import SourceFile, parse_source_file

ALPACA = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_5000.json"


def _reference(key: np.ndarray, output_len: np.ndarray, uid: np.ndarray) -> dict[int, int]:
    """uid -> the uid of its key's winner (longest output, then first in input order), by a dict walk."""
    best: dict[int, tuple[int, int]] = {}
    for k, n, u in zip(key.tolist(), output_len.tolist(), uid.tolist()):
        if k not in best or (-n, u) < (-best[k][0], best[k][1]):
            best[k] = (n, u)
    return {u: best[k][1] for k, u in zip(key.tolist(), uid.tolist())}


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    rows=st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 3)), max_size=60),
    seed=st.integers(0, 2**16),
)
def test_exact_winners_match_a_dict_walk_with_ties_on_length(rows, seed):
    key = np.array([k for k, _ in rows], dtype=np.int64)
    output_len = np.array([n for _, n in rows], dtype=np.int64)
    uid = np.sort(np.random.default_rng(seed).choice(10 * len(rows) + 1, size=len(rows), replace=False))
    losers, winners, matched = exact_winners(key, output_len, uid)
    expected = _reference(key, output_len, uid)
    assert winners.tolist() == sorted(u for u, w in expected.items() if u == w)
    assert dict(zip(losers[0].tolist(), losers[1].tolist())) == {u: w for u, w in expected.items() if u != w}
    assert losers[0].tolist() == sorted(losers[0].tolist())
    assert matched.tolist() == sorted(set(losers[1].tolist()))


def _corpus(tmp_path: Path) -> Path:
    """400 real Alpaca rows, a third repeated (some with a longer output), and a few invalid lines."""
    records = json.loads(ALPACA.read_text())[:400]
    rng = np.random.default_rng(7)
    lines = [json.dumps(r) for r in records]
    for i in rng.choice(len(records), size=140):
        again = dict(records[i])
        if rng.random() < 0.4:
            again["output"] = again["output"] + " More."
        lines.insert(int(rng.integers(len(lines) + 1)), json.dumps(again))
    for at in (3, 77, 301):
        lines.insert(at, "{not json")
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _splits(n: int, seed: int) -> list[tuple[int, int]]:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), size=min(n - 1, 6), replace=False))
    bounds = [0, *cuts.tolist(), n]
    return list(zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("seed,reducers", [(0, 1), (1, 3), (2, 7)])
def test_the_shuffle_decides_as_one_block_on_any_split_and_reducer_count(ray_session, tmp_path, seed, reducers):
    import ray

    path = _corpus(tmp_path)
    piece = SourceFile("s", str(path), 0, "jsonl", ColumnMapping().model_dump())
    table = parse_source_file(piece)
    n = table.num_rows
    blocks = [table.slice(a, b - a) for a, b in _splits(n, seed)]
    parsed = ray.data.from_arrow_refs([ray.put(b) for b in blocks]).materialize()

    state = input_rows.start(parsed, [piece], timeout_s=300)
    assert state.n == n and state.summary.valid == n - 3 and len(state.spans) == len(blocks)
    priorities = reducers != 3  # keep: first asks for none
    settled = input_rows.settle(state, "all", reducers, priorities=priorities)

    valid = table["valid"].to_numpy(zero_copy_only=False)
    uid = np.arange(n)[valid]
    key = table["dedup_key"].to_numpy(zero_copy_only=False)[valid]
    output_len = table["output_len"].to_numpy(zero_copy_only=False)[valid]
    expected = _reference(key, output_len, uid)
    survivors = sorted(u for u, w in expected.items() if u == w)
    assert settled.survivors.tolist() == survivors
    if priorities:
        assert settled.output_len.tolist() == table["output_len"].to_numpy(zero_copy_only=False)[survivors].tolist()
    else:
        assert settled.output_len is None and len(settled.source) == len(survivors)
    winners = sorted({w for u, w in expected.items() if u != w})  # whose ids the ledger names, found in their blocks
    ids = pa.concat_tables(ray.get(state.winner_ids))
    assert ids["uid"].to_pylist() == winners and ids["id"].to_pylist() == table["id"].take(winners).to_pylist()
    assert settled.stats["reducers"] == reducers and len(state.winner_ids) == reducers
    assert sum(settled.stats["tasks_per_node"].values()) == reducers + len(blocks)
    keyed = pa.concat_tables(ray.get(r) for r in settled.keyed.to_arrow_refs())
    assert keyed["key"].to_pylist() == list(range(len(survivors)))
    assert keyed["instruction"].to_pylist() == table["instruction"].take(survivors).to_pylist()

    # every row is counted once: survivors here, the rest in the blocks' counts
    counts = settled.counts.entries
    assert sum(c for c, _ in counts.values()) + len(survivors) == n
    assert [c for (_, status, _), (c, _) in counts.items() if status == INVALID] == [3]
    assert counts[(0, INVALID, "malformed_json")][1] == 3  # its first row, in input order
    removed = sum(c for (_, status, reason), (c, _) in counts.items() if status == REMOVED)
    assert removed == len(uid) - len(survivors)
    assert all(status != KEPT for (_, status, _) in counts)
    states = ray.get(state.states)
    status = np.concatenate([s["status"] for s in states])
    matched = np.concatenate([s["matched_uid"] for s in states])
    gone = np.flatnonzero(status == REMOVED)
    assert {int(u): int(matched[u]) for u in gone} == {u: w for u, w in expected.items() if u != w}
