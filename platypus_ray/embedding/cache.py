"""Embedding cache: vectors kept as Parquet shards, keyed by a hash of the embedded text.

Layout (local folder or any URI pyarrow can write, ``s3://`` included)::

    <embedding.cache>/<model key>-<backend>-<precision>-<digest>/
        identity.json        what made the vectors: model fingerprint, backend, precision
        <run>_*.parquet      text_hash: fixed_size_binary(16), embedding: fixed_size_list<float32>[dim]

The hash covers the embedded text itself, so a change to the text rule misses by construction;
the folder name covers the model (its files' names, sizes and config, as exports do) and the
backend, so another model misses by construction. Shards are only ever added, under names unique
to the run that wrote them, so runs sharing a cache never overwrite each other. A shard that cannot
be read, has another schema or dimension, or holds vectors that are not unit length is skipped with
a warning naming it, and its rows are embedded again: never silently wrong vectors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from platypus_ray.core.blocks import read_columns, rows_only
from platypus_ray.core.errors import UserError
from platypus_ray.core.waits import wait_all

HASH_BYTES = 16
FORMAT = 1  # bump when the shard layout changes: old shards then sit in another folder
_UNIT_TOLERANCE = 1e-3


def text_hash(text: str) -> bytes:
    """The cache key of one embedded text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=HASH_BYTES).digest()


def hash_array(texts: list[str]) -> pa.Array:
    return pa.array([text_hash(t) for t in texts], type=pa.binary(HASH_BYTES))


def as_keys(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_binary(16) column as a numpy ``S16`` array (sortable, searchable, no copies per row)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError("null text hashes")
    data = np.frombuffer(array.buffers()[1], dtype=f"S{HASH_BYTES}")
    return data[array.offset : array.offset + len(array)]


def default_location(output: str) -> str:
    """Beside the refine output (never inside it: the output is replaced whole on every run)."""
    return os.path.join(os.path.dirname(os.path.abspath(os.path.expanduser(output))), "embedding-cache")


@dataclass
class Lookup:
    """Which of the asked hashes the cache holds; their vectors stay in the object store as
    ``{"key", "embedding"}`` pieces (one per shard read), keyed by the keys given to ``lookup``."""

    found: np.ndarray
    pieces: list
    warnings: list[str] = field(default_factory=list)


class EmbeddingCache:
    """The shards of one (model, backend, precision) under a cache location."""

    def __init__(self, location: str, identity: dict):
        self.location = location
        self.identity = {"format": FORMAT, **identity}
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{identity['model_key']}-{identity['backend']}-{identity['precision']}-{digest}"
        if "://" in location:
            self.fs, root = pafs.FileSystem.from_uri(location)
        else:
            self.fs, root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
        self.folder = f"{root.rstrip('/')}/{name}"
        self.uri = f"{location.rstrip('/')}/{name}" if "://" in location else self.folder

    def check(self) -> None:
        """Refuse a namespace folder whose identity.json names something else (copied or hand-edited)."""
        try:
            with self.fs.open_input_stream(f"{self.folder}/identity.json") as handle:
                recorded = json.loads(handle.read())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise UserError(
                f"embedding.cache: {self.uri}/identity.json is unreadable ({exc}); "
                "move that folder away or set embedding.cache to another location"
            ) from None
        if recorded != self.identity:
            raise UserError(
                f"embedding.cache: {self.uri} holds vectors of {recorded}, not of {self.identity}; "
                "move that folder away or set embedding.cache to another location"
            )

    def shards(self) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.folder, allow_not_found=True))
        except OSError:
            return []
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))

    def lookup(self, hashes: np.ndarray, keys: np.ndarray | None = None, timeout_s: float = 3600.0) -> Lookup:
        """The ``S16`` ``hashes`` found in any shard, their vectors read by one Ray task per shard;
        unusable shards are skipped, with a warning. The driver reads hash columns only."""
        keys = np.arange(len(hashes), dtype=np.int64) if keys is None else keys
        found = np.zeros(len(hashes), dtype=bool)
        warnings: list[str] = []
        order = np.argsort(hashes, kind="stable")
        wanted = hashes[order]
        reads: list[tuple[str, np.ndarray, list[ray.ObjectRef]]] = []  # (path, asked positions it serves, task refs)
        for path in self.shards() if len(hashes) else []:
            try:
                shard_hashes = _read_hashes(self.fs, path)
            except (OSError, ValueError, pa.ArrowException) as exc:
                warnings.append(
                    f"embedding cache: skipped unreadable shard {path} ({exc}); its rows are embedded "
                    "again (a write cut short leaves such a file; it is safe to delete)"
                )
                continue
            # A shard may hold a text twice (a run that embedded it as a training row and as a benchmark
            # probe): each distinct hash is read once. Every asked position of it is served: a text asked
            # twice (two benchmark items sharing a passage) is served twice; a text in two shards (two
            # runs at once) is taken once.
            shard_hashes, first_row = np.unique(shard_hashes, return_index=True)
            left, right = np.searchsorted(wanted, shard_hashes, "left"), np.searchsorted(wanted, shard_hashes, "right")
            hit = np.flatnonzero(right > left)
            lengths = (right - left)[hit]
            positions = (
                np.repeat(left[hit], lengths)
                + np.arange(lengths.sum())
                - np.repeat(np.cumsum(lengths) - lengths, lengths)
            )
            shard_rows = np.repeat(first_row[hit], lengths)
            new = ~found[order[positions]]
            if not new.any():
                continue
            served = order[positions[new]]
            found[served] = True
            # num_returns=2: a list of two refs (Ray's stubs type .remote() as returning one ObjectRef)
            piece_refs = _read_piece.options(num_returns=2).remote(self.fs, path, shard_rows[new], keys[served])
            reads.append((path, served, cast("list[ray.ObjectRef]", piece_refs)))
        infos = wait_all([refs[1] for _, _, refs in reads], timeout_s)
        dims = [info["dim"] for info in infos if not info["error"]]
        pieces = []
        for (path, served, refs), info in zip(reads, infos):
            problem = info["error"] or (
                f"its vectors have {info['dim']} dimensions, the others {dims[0]}" if info["dim"] != dims[0] else None
            )
            if problem:
                warnings.append(f"embedding cache: skipped shard {path} ({problem}); its rows are embedded again")
                found[served] = False
            else:
                pieces.append(refs[0])
        return Lookup(found, pieces, warnings)

    def store(self, embedded) -> list[str]:
        """Append the ``text_hash``/``embedding`` rows of a Ray dataset as new shards of at most
        SHARD_ROWS rows, each written by a Ray task. A cache is a shortcut, not an output: a shard
        that cannot be written (a full disk) is removed and becomes a warning, returned."""
        self.check()
        try:
            self.fs.create_dir(self.folder, recursive=True)
            if self.fs.get_file_info(f"{self.folder}/identity.json").type != pafs.FileType.File:
                with self.fs.open_output_stream(f"{self.folder}/identity.json") as handle:
                    handle.write(json.dumps(self.identity, indent=2, sort_keys=True).encode())
        except OSError as exc:
            return [f"embedding cache: cannot write {self.uri} ({exc}); this run's vectors are not cached"]
        written = embedded.map_batches(
            _write_shard, fn_kwargs={"fs": self.fs, "folder": self.folder}, batch_size=SHARD_ROWS, batch_format="numpy"
        )
        problems = [e for e in read_columns(written, ["error"], SHARD_WRITTEN)["error"].to_pylist() if e]
        return (
            [f"embedding cache: {len(problems)} shard(s) not written ({problems[0]}); those vectors are not cached"]
            if problems
            else []
        )


SHARD_ROWS = 100_000
SHARD_WRITTEN = pa.schema([("error", pa.string())])


@rows_only(SHARD_WRITTEN)
def _write_shard(batch: dict[str, np.ndarray], fs: pafs.FileSystem, folder: str) -> pa.Table:
    """One shard file of ``batch``; what failed (the partial file removed) as a value, not a traceback."""
    path = f"{folder}/{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(_as_shard_rows(batch), path, filesystem=fs)
    except OSError as exc:
        with contextlib.suppress(OSError):
            fs.delete_file(path)
        return pa.table({"error": [str(exc)]}, schema=SHARD_WRITTEN)
    return pa.table({"error": [""]}, schema=SHARD_WRITTEN)


@rows_only(lambda: pa.table({"text_hash": pa.array([], pa.binary(HASH_BYTES))}))
def _as_shard_rows(batch: dict[str, np.ndarray]) -> pa.Table:
    """``text_hash`` + ``embedding`` as a plain fixed_size_list (readable without Ray's tensor type)."""
    vectors = np.ascontiguousarray(batch["embedding"], dtype=np.float32)
    return pa.table(
        {
            "text_hash": pa.array(list(batch["text_hash"]), type=pa.binary(HASH_BYTES)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
        }
    )


def _read_hashes(fs: pafs.FileSystem, path: str) -> np.ndarray:
    shard = pq.ParquetFile(fs.open_input_file(path))
    schema = shard.schema_arrow
    if schema.names != ["text_hash", "embedding"] or schema.field("text_hash").type != pa.binary(HASH_BYTES):
        raise ValueError(f"not an embedding-cache shard: columns {schema}")
    vector_type = schema.field("embedding").type
    if not (pa.types.is_fixed_size_list(vector_type) and vector_type.value_type == pa.float32()):
        raise ValueError(f"embedding column is {vector_type}, not fixed_size_list<float32>")
    return as_keys(shard.read(columns=["text_hash"]).column(0))


@ray.remote
def _read_piece(fs: pafs.FileSystem, path: str, rows: np.ndarray, keys: np.ndarray):
    """The vectors of a shard's ``rows`` as the ``{"key", "embedding"}`` piece of ``keys``, and
    ``{"dim", "error"}``: a shard whose vectors are not unit length (NaN included) is refused."""
    try:
        column = pq.ParquetFile(fs.open_input_file(path)).read(columns=["embedding"]).column(0).combine_chunks()
        dim = column.type.list_size
        vectors = pc.take(column, pa.array(rows)).flatten().to_numpy(zero_copy_only=False).reshape(len(rows), dim)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return None, {"dim": None, "error": str(exc)}
    if not np.all(np.abs(np.linalg.norm(vectors, axis=1) - 1.0) <= _UNIT_TOLERANCE):  # NaN fails too
        return None, {"dim": dim, "error": "it holds vectors that are not unit length"}
    return {"key": keys, "embedding": vectors}, {"dim": dim, "error": None}
