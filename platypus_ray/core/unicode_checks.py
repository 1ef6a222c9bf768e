"""Text that is not valid Unicode: one definition for source rows and benchmark items."""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
LONE_SURROGATE_PROBLEM = "holds a lone UTF-16 surrogate (an escape such as \\ud800 without its pair): not valid Unicode"


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate code point: JSON lets ``\\ud800`` through, UTF-8 cannot encode it."""
    return _LONE_SURROGATE.search(text) is not None
