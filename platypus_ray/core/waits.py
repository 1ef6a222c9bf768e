"""Bounded waits on Ray tasks: past the bound, cancel what is left (releasing its CPUs) and say so.

The stage that passes a bound down names its config key with :func:`bounded_by` around the step,
so a timeout deep in a shared helper (an embedding block gather, a similarity tile) reports the
key the user can raise, not the key of whichever step first called the helper.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import ray

from platypus_ray.core.errors import UserError

_FREE_CPUS = "the cluster may lack free CPUs, or raise the bound"
_BOUND: ContextVar[tuple[str, str, str]] = ContextVar(
    "bound", default=("Ray tasks", "the step's timeout_s", _FREE_CPUS)
)


@contextmanager
def bounded_by(key: str, what: str, fix: str = _FREE_CPUS) -> Iterator[None]:
    """Within this block, a wait that runs out names ``what`` ("embedding tasks"), ``key`` (the
    config key its bound came from, "embedding.timeout_s") and ``fix`` (what the user can do)."""
    token = _BOUND.set((what, key, fix))
    try:
        yield
    finally:
        _BOUND.reset(token)


def wait_all(refs: list, timeout_s: float) -> list:
    """Results of ``refs`` in order; if they are not all done within ``timeout_s``, cancel the
    rest and raise, rather than wait forever on a stuck or starved task."""
    if not refs:
        return []
    _ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s, fetch_local=False)
    if pending:
        _give_up(pending, len(refs), timeout_s)
    return ray.get(list(refs))


def as_completed(refs: list, timeout_s: float):
    """Yield each result as its task finishes (so the driver holds one task's output at a time);
    past ``timeout_s`` in all, cancel what is left and raise, as :func:`wait_all` does."""
    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            _give_up(pending, len(refs), timeout_s)
        yield ray.get(done[0])


def _give_up(pending: list, total: int, timeout_s: float) -> None:
    for ref in pending:
        ray.cancel(ref, force=True)
    what, key, fix = _BOUND.get()
    raise UserError(f"{len(pending)} of {total} {what} did not finish within {timeout_s:.0f} s ({key}); {fix}")
