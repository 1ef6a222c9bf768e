"""Ray Data blocks without rows: nothing may read their schema.

Ray Data hands a 0-row block on through a step without calling the step's function, so an
empty block can carry any schema: none at all, or the schema of a step before it (an empty
source file's block reached the embed step with none of the columns the step writes, and the
cache lookup's ``select(["key", ...])`` failed on it). Every reader of blocks goes through
this module: a block with rows has its step's schema; a block without rows is skipped and
never asked for columns.

* :func:`rows_only` wraps every function and callable class given to ``map_batches``: a
  batch without rows gives the step's empty output (``tests/test_blocks.py`` checks that every
  ``map_batches`` call site in the package passes a wrapped function).
* :func:`has_rows` is the test for one block in any batch format (tasks that take block refs).
* :func:`read_columns` and :func:`batches` read blocks on the driver.
* :func:`block_spans` lists the blocks with rows by reference (tasks that take block refs).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import ray.data
    from ray import ObjectRef

BlockSpan = tuple["ObjectRef", int, int]  # a block, and the rows [start, stop) of it that belong to the dataset

ROWS_ONLY = "__rows_only__"  # attribute marking a wrapped map function (checked by tests/test_blocks.py)


def num_rows(batch: Any) -> int:
    """Rows in a block or batch of any format (Arrow, pandas, a dict of numpy columns); 0 for none."""
    if batch is None:
        return 0
    if isinstance(batch, pa.Table):
        return batch.num_rows
    if isinstance(batch, dict):
        return len(next(iter(batch.values()))) if batch else 0
    return len(batch)


def has_rows(batch: Any) -> bool:
    return num_rows(batch) > 0


def rows_only(empty_output: pa.Schema | Callable[[], Any]):
    """Decorate a ``map_batches`` function (or a callable class's ``__call__``): a batch without
    rows returns ``empty_output`` (a schema's empty table, or what the callable gives) without
    the function reading a column of it."""

    def empty():
        return empty_output.empty_table() if isinstance(empty_output, pa.Schema) else empty_output()

    def wrap(fn):
        batch_at = 1 if next(iter(inspect.signature(fn).parameters), "") == "self" else 0

        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            return fn(*args, **kwargs) if has_rows(args[batch_at]) else empty()

        setattr(guarded, ROWS_ONLY, True)
        return guarded

    return wrap


def read_columns(ds: ray.data.Dataset, names: list[str], schema: pa.Schema) -> pa.Table:
    """``names`` of every row of ``ds`` on the driver, in block order; ``schema``'s empty table
    (those columns) when no block has rows."""
    import ray

    tables = [table.select(names) for table in (ray.get(ref) for ref in ds.to_arrow_refs()) if table.num_rows]
    return pa.concat_tables(tables) if tables else schema.empty_table().select(names)


def batches(ds: ray.data.Dataset, batch_format: str) -> Iterator[Any]:
    """``ds``'s blocks as batches (one a block), leaving out those without rows."""
    for batch in ds.iter_batches(batch_format=batch_format, batch_size=None):
        if has_rows(batch):
            yield batch


def block_spans(ds: ray.data.Dataset) -> list[BlockSpan]:
    """``ds``'s rows as (block reference, start, stop) in dataset order, from the blocks' metadata
    (no block passes through the driver); blocks without rows are left out."""
    spans = []
    for bundle in ds.iter_internal_ref_bundles():
        for entry, part in zip(bundle.blocks, bundle.slices, strict=True):
            start, stop = (0, entry.metadata.num_rows) if part is None else (part.start_offset, part.end_offset)
            if stop is None:  # materialised blocks always know their rows
                raise RuntimeError(f"a block of {ds} has no row count in its metadata")
            if stop > start:
                spans.append((entry.ref, start, stop))
    return spans
