"""The ``platypus_ray`` logger: library modules log with ``logging.getLogger(__name__)``; only
:func:`setup` (called by the CLI and by the worker entry points Ray starts) gives it a handler.

The handler writes each record's message as it is, one line, no level or time prefix: the
console reads exactly as the ``print`` calls it replaces did. Warnings and errors go to
``stderr``, everything else to ``stdout``; the stream is looked up at each write, so a stream
swapped in later (the console's routing, a test's capture) receives it. Without :func:`setup`
the library prints nothing of its own, beyond Python's last-resort handler for warnings.
"""

from __future__ import annotations

import logging
import sys

ROOT = "platypus_ray"


class PlainHandler(logging.Handler):
    """The record's message on ``sys.stdout`` (``sys.stderr`` from WARNING up), flushed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001  (logging's own rule: a failed write never raises)
            self.handleError(record)


def setup(level: int = logging.INFO) -> logging.Logger:
    """Give the ``platypus_ray`` logger its one plain handler (idempotent)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(handler, PlainHandler) for handler in logger.handlers):
        logger.addHandler(PlainHandler())
    logger.setLevel(level)
    # A library that configures the root logger (basicConfig) would otherwise print each line twice.
    logger.propagate = False
    return logger


def tenth(step: int, total: int) -> int:
    """Which tenth of a run of ``total`` steps ``step`` completes (0..10)."""
    return min(10, step * 10 // max(total, 1))


def progress_due(step: int, total: int, last_shown: int | None) -> bool:
    """Whether a progress line at ``step`` of ``total`` shows, given the step of the last one
    shown (None: none yet): the first step, then the first step into each new tenth of the run,
    so a run of any length prints about ten lines; a run of 10 steps or fewer prints every step."""
    return last_shown is None or tenth(step, total) > tenth(last_shown, total)
