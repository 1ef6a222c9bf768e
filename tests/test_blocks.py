"""Blocks without rows (platypus_ray/core/blocks.py): no step may depend on their schema.

Ray Data passes a 0-row block through a step without calling the step's function, so such a
block may have no columns or another step's. Three checks that would find the next case:
* every ``map_batches`` / ``actor_pool_map`` call site in the package passes a function
  wrapped by ``rows_only`` (an AST walk: a new step without the guard fails here);
* every such function, given random splits of the same rows into blocks with 0-row blocks of
  foreign schemas among them, gives the same result as on the whole (hypothesis);
* the driver-side readers and the vector assembly, on real Ray datasets built from such splits.
"""

from __future__ import annotations

import ast
import collections
import importlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray.data.block import BlockAccessor
from ray.data.extensions import ArrowTensorArray

import platypus_ray
from platypus_ray.core.blocks import ROWS_ONLY
from platypus_ray.embedding import cache as embedding_cache
from platypus_ray.embedding import pool as embed_module
from platypus_ray.embedding.cache import hash_array
from platypus_ray.refine import contamination, input_rows, ledger, sources
from platypus_ray.refine.config import ColumnMapping
from platypus_ray.refine.sources import PARSED_SCHEMA, SourceFile, parse_source_file
from platypus_ray.testsets import BenchmarkItem
from platypus_ray.train import data as train_data
from platypus_ray.train import packing

PACKAGE = Path(platypus_ray.__file__).parent
# Schemas a 0-row block may carry instead of its step's own: none, and those of other steps.
FOREIGN = [
    pa.schema([]),
    PARSED_SCHEMA,
    input_rows.KEYED_SCHEMA,
    embed_module.TO_EMBED_SCHEMA,
    pa.schema([("embedding", pa.list_(pa.float32()))]),
]


def _map_function_names() -> set[tuple[str, str]]:
    """(module, name) of every function handed to ``map_batches`` or ``actor_pool_map`` in the package
    (the benches included); a name that is a parameter (``actor_pool_map``'s own ``fn_cls``) is skipped."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Attribute, ast.Name)):
                continue
            called = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            position = {"map_batches": 0, "actor_pool_map": 1}.get(called)
            if position is None or len(node.args) <= position:
                continue
            target = node.args[position]
            name = ast.unparse(target)
            if isinstance(target, ast.Name) and name in {
                a.arg
                for f in ast.walk(ast.parse(path.read_text()))
                if isinstance(f, ast.FunctionDef)
                for a in f.args.args
            }:
                continue
            found.add((module, name))
    return found


def _resolve(module: str, name: str):
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj.__call__ if isinstance(obj, type) else obj


def test_every_map_function_in_the_package_skips_blocks_without_rows():
    found = _map_function_names()
    assert ("platypus_ray.embedding.pool", "_rows_of_keys") in found  # the walk sees the call sites
    found.add(("platypus_ray.embedding.pool", "Embedder"))  # reaches actor_pool_map as embed_texts' parameter
    unguarded = sorted(f"{m}.{n}" for m, n in found if not getattr(_resolve(m, n), ROWS_ONLY, False))
    assert not unguarded, f"map_batches functions not wrapped by platypus_ray.core.blocks.rows_only: {unguarded}"


# ---- each block function on random splits -------------------------------------------------


def _parsed(tmp_path: Path) -> pa.Table:
    rows = [
        json.dumps({"instruction": f"Task {i % 7}", "input": "x" if i % 3 else "", "output": "y" * (i % 5 + 1)})
        for i in range(23)
    ] + ["{broken", "[1]"]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return parse_source_file(SourceFile("s", str(path), 0, "jsonl", ColumnMapping().model_dump()))


def _keyed(parsed: pa.Table) -> pa.Table:
    n = parsed.num_rows
    survivor = np.arange(n) % 4 != 3
    return input_rows.keyed_rows(parsed.filter(pa.array(survivor)), np.flatnonzero(survivor), "all")


def _chat_keyed(tmp_path: Path) -> pa.Table:
    """Keyed conversation rows of one or two exchanges, some user turns long enough for windows."""
    turns = lambda i: [
        {"role": "user", "content": " ".join(f"q{i}w{w}" for w in range(i % 9 + 1))},
        {"role": "assistant", "content": "A."},
        {"role": "user", "content": f"And {i}?"},
        {"role": "assistant", "content": "B."},
    ][: 2 + 2 * (i % 2)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": turns(i)}) + "\n" for i in range(17)))
    parsed = parse_source_file(SourceFile("c", str(path), 0, "jsonl", ColumnMapping().model_dump()))
    return input_rows.keyed_rows(parsed, np.arange(parsed.num_rows), "all")


def _cases(tmp_path: Path, tiny_model_path: str) -> dict:
    """name -> (function, whole input table, batch format, kwargs, comparable form of the output)."""
    parsed = _parsed(tmp_path)
    n = parsed.num_rows
    keyed = _keyed(parsed)
    to_embed = keyed.select(embed_module.TO_EMBED_SCHEMA.names)
    file_table = pa.Table.from_pylist(
        [
            {
                "source": "s",
                "path": str(tmp_path / "rows.jsonl"),
                "file_rank": r,
                "format": "jsonl",
                "columns": ColumnMapping().model_dump(),
            }
            for r in range(3)
        ]
    )
    items = [BenchmarkItem(f"b/x:{i}", "b", " ".join(f"Task {i % 7} word{w}" for w in range(9))) for i in range(3)]
    vectors = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    shard = pa.table(
        {"text_hash": hash_array([f"t{i}" for i in range(n)]), "embedding": ArrowTensorArray.from_numpy(vectors)}
    )
    tokenized = train_data.tokenize_batch(
        BlockAccessor.for_block(keyed).to_batch_format("numpy"), tiny_model_path, 64, False, True
    )
    rows = lambda t: sorted(map(repr, t.to_pylist()))
    chat_keyed = _chat_keyed(tmp_path)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir(parents=True)
    return {
        "sources._parse_files": (sources._parse_files, file_table, "pyarrow", {}, rows),
        "embed._rows_of_keys": (
            embed_module._rows_of_keys,
            to_embed,
            "pyarrow",
            {"wanted": np.arange(n) % 2 == 0},
            rows,
        ),
        "contamination.ngram_matches": (
            contamination.ngram_matches,
            keyed,
            "numpy",
            {"index": contamination.NgramIndex.build(items, 3)},
            rows,
        ),
        "contamination.turn_counts": (contamination.turn_counts, chat_keyed, "pyarrow", {"window_words": 4}, rows),
        "contamination.turn_rows": (
            contamination.turn_rows,
            chat_keyed,
            "pyarrow",
            {"starts": np.arange(chat_keyed.num_rows) * 100, "window_words": 4},
            rows,
        ),
        "ledger._text_rows": (
            ledger._text_rows,
            parsed,
            "pyarrow",
            {"file_offset": np.array([0]), "wanted": np.arange(0, n, 2)},
            rows,
        ),
        "ledger._id_rows": (
            ledger._id_rows,
            parsed,
            "pyarrow",
            {"file_offset": np.array([0]), "wanted": np.arange(0, n, 3)},
            rows,
        ),
        "embedding_cache._write_shard": (
            embedding_cache._write_shard,
            shard,
            "numpy",
            {"fs": pafs.LocalFileSystem(), "folder": str(shard_dir)},
            lambda t: _written(shard_dir),
        ),
        "train_data.tokenize_batch": (
            train_data.tokenize_batch,
            keyed,
            "numpy",
            {"tokenizer_path": tiny_model_path, "cutoff_len": 64, "train_on_inputs": False, "add_eos_token": True},
            rows,
        ),
        "train_data._token_counts": (
            train_data._token_counts,
            tokenized,
            "numpy",
            {},
            lambda t: {k: sum(t[k].to_pylist()) for k in ("rows", "tokens", "truncated")},
        ),
        "embed.embed_in_task": (
            embed_module.embed_in_task,
            to_embed,
            "numpy",
            {"embedder": embed_module.Embedder, "ctor": _static_embedder_arguments()},
            _vectors_by_key,
        ),
        # Packing is per block by design: what must not change is which tokens and rows come out.
        "packing.pack_batch": (
            packing.pack_batch,
            tokenized,
            "numpy",
            {"cutoff_len": 64, "seed": 0},
            lambda t: (
                sum(t["num_rows"].to_pylist()),
                collections.Counter(x for seq in t["input_ids"].to_pylist() for x in seq),
            ),
        ),
    }


def _static_embedder_arguments() -> dict:
    from platypus_ray.embedding.encoders import EncoderSpec

    spec = EncoderSpec("all-MiniLM-L6-v2", "static", device="cpu")
    return {"model": spec.model, "device": "cpu", "batch_size": 256, "spec": spec, "keep_hash": False}


def _vectors_by_key(t: pa.Table) -> list:
    vectors = np.asarray(t["embedding"].combine_chunks().to_numpy_ndarray())
    return sorted((key, vector.tobytes()) for key, vector in zip(t["key"].to_pylist(), vectors))


def _written(folder: Path) -> list[str]:
    """The rows of the Parquet files a writer left in ``folder``, in file-name order; the files are
    then removed, so the next split writes into an empty folder."""
    files = sorted(folder.glob("*.parquet"))
    rows = [repr(row) for f in files for row in pq.read_table(f).to_pylist()]
    for f in files:
        f.unlink()
    return rows if "ledger" in folder.name or "kept" in folder.name else sorted(rows)


@st.composite
def block_splits(draw, n_rows: int):
    """Cut points of n_rows rows into blocks, with 0-row blocks of foreign schemas inserted."""
    cuts = sorted(draw(st.lists(st.integers(0, n_rows), max_size=6)))
    bounds = [0, *cuts, n_rows]
    pieces: list = [("rows", a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    for _ in range(draw(st.integers(0, 4))):
        pieces.insert(draw(st.integers(0, len(pieces))), ("foreign", draw(st.integers(0, len(FOREIGN) - 1)), 0))
    return pieces


def _as_blocks(table: pa.Table, split) -> list[pa.Table]:
    return [table.slice(a, b - a) if kind == "rows" else FOREIGN[a].empty_table() for kind, a, b in split]


def _outputs(fn, blocks, batch_format: str, kwargs: dict) -> pa.Table:
    """``fn`` called on every block as Ray calls it (its batch format), outputs with rows concatenated."""
    outs = [
        BlockAccessor.batch_to_block(fn(BlockAccessor.for_block(b).to_batch_format(batch_format), **kwargs))
        for b in blocks
    ]
    outs = [o for o in outs if o.num_rows]
    return pa.concat_tables(outs) if outs else None


@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny_model):
    return _cases(tmp_path_factory.mktemp("blocks"), tiny_model)


CASE_NAMES = [
    "sources._parse_files",
    "embed._rows_of_keys",
    "embed.embed_in_task",
    "contamination.ngram_matches",
    "contamination.turn_counts",
    "contamination.turn_rows",
    "ledger._text_rows",
    "ledger._id_rows",
    "embedding_cache._write_shard",
    "train_data.tokenize_batch",
    "train_data._token_counts",
    "packing.pack_batch",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_block_function_gives_the_same_result_on_any_split(cases, name):
    fn, table, batch_format, kwargs, comparable = cases[name]
    expected = comparable(_outputs(fn, [table], batch_format, kwargs))

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(split=block_splits(table.num_rows))
    def check(split):
        got = _outputs(fn, _as_blocks(table, split), batch_format, kwargs)
        assert comparable(got) == expected

    check()


def test_the_cases_cover_every_map_function(cases):
    """A new map function must get a case above (the Embedder, a model, is checked on Ray below)."""
    assert sorted(cases) == sorted(CASE_NAMES)
    covered = {getattr(fn, "__wrapped__", fn) for fn, *_ in cases.values()}
    missing = sorted(
        f"{m}.{n}"
        for m, n in _map_function_names()
        if not n.startswith(("Embedder", "embedder", "fn_cls"))
        and "evaluate" not in m
        and getattr(_resolve(m, n), "__wrapped__", None) not in covered
    )
    assert not missing, f"map functions without a random-split case in tests/test_blocks.py: {missing}"


# ---- driver-side readers and the vector assembly, on Ray --------------------------------


@pytest.mark.slow
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(split=block_splits(25))
def test_driver_readers_and_vector_assembly_ignore_blocks_without_rows(ray_session, cases, split):
    import ray

    from platypus_ray.core.blocks import batches, read_columns
    from platypus_ray.embedding.vectors import assemble

    keyed = _keyed(cases["ledger._id_rows"][1])
    table = keyed.select(embed_module.TO_EMBED_SCHEMA.names)
    ds = ray.data.from_arrow_refs([ray.put(b) for b in _as_blocks(table, split)])
    keys, hashes = embed_module._keys_and_hashes(ds)
    assert sorted(keys.tolist()) == sorted(table["key"].to_pylist()) and len(hashes) == table.num_rows
    assert read_columns(ds, ["key"], embed_module.TO_EMBED_SCHEMA).num_rows == table.num_rows
    assert sum(b.num_rows for b in batches(ds, "pyarrow")) == table.num_rows

    n = table.num_rows
    vectors = np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32)
    pieces = [
        ray.put(
            {"key": np.arange(a, b), "embedding": vectors[a:b]}
            if kind == "rows" and b > a
            else BlockAccessor.for_block(
                FOREIGN[a].empty_table() if kind == "foreign" else pa.table({})
            ).to_batch_format("numpy")
        )
        for kind, a, b in [(k, min(a, n), min(b, n)) if k == "rows" else (k, a, 0) for k, a, b in split]
    ]
    blocks = assemble(pieces, n, timeout_s=60, rows_per_block=7)
    np.testing.assert_array_equal(blocks.to_matrix(), vectors)
