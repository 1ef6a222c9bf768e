"""The ``platypus_ray`` logger: one plain handler (the CLI's), nothing printed without it, and the
rule that picks which training steps get a progress line."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from platypus_ray.core import log
from platypus_ray.core.log import progress_due


def test_records_reach_the_console_as_plain_lines(capsys):
    log.setup()
    log.setup()  # idempotent: still one line per record
    logger = logging.getLogger("platypus_ray.refine.stage")
    logger.info("refine: %d input rows -> %d kept", 119, 91)
    logger.warning("refine: WARNING: benchmark '%s' has no items", "arc")
    logger.debug("not shown at the default level")
    out, err = capsys.readouterr()
    assert out == "refine: 119 input rows -> 91 kept\n"
    assert err == "refine: WARNING: benchmark 'arc' has no items\n"  # warnings on stderr, as before


def test_a_library_module_prints_nothing_without_the_handler():
    code = (
        "import logging, platypus_ray.core.outputs\n"
        "logger = logging.getLogger('platypus_ray.core.outputs')\n"
        "logger.info('progress nobody asked for')\n"
        "logger.warning('a warning')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout == ""
    assert done.stderr == "a warning\n"  # Python's last-resort handler: warnings only, the message alone


def lines(total: int, every: int = 1) -> list[int]:
    """The steps that get a line when the Trainer logs every ``every`` steps of ``total``."""
    shown: list[int] = []
    for step in [*range(every, total + 1, every), *([total] if total % every else [])]:
        if progress_due(step, total, shown[-1] if shown else None):
            shown.append(step)
    return shown


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (1, [1]),
        (7, [1, 2, 3, 4, 5, 6, 7]),  # 10 steps or fewer: every step
        (10, list(range(1, 11))),
        (30, [1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]),
        (1000, [1, *range(100, 1001, 100)]),
    ],
)
def test_about_one_progress_line_per_tenth_of_the_run(total, expected):
    assert lines(total) == expected


def test_progress_lines_follow_the_steps_that_were_logged():
    assert lines(30, every=4) == [4, 8, 12, 16, 20, 24, 28, 30]  # the first log in each new tenth
    assert lines(1003, every=50) == [50, *range(150, 1000, 100), 1003]  # the last step is always a log
