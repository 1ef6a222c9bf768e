"""The canonical instruction row: validation, content id, exact-dedup key, embedded text."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import numpy as np

from platypus_ray.core.unicode_checks import LONE_SURROGATE_PROBLEM, has_lone_surrogate
from platypus_ray.refine.config import ColumnMapping
from platypus_ray.refine.conversations import single_turn, user_turns

CANONICAL_COLUMNS = ("id", "instruction", "input", "output", "data_source")
_SPACES = re.compile(r"\s+")


def validate_record(record: Any, columns: ColumnMapping) -> tuple[dict[str, str] | None, str, str]:
    """Map a raw record to (instruction, input, output) or explain why it is invalid.

    Returns ``(fields, reason, detail)``; ``fields`` is None for an invalid record and
    ``reason`` is a short code (``not_an_object``, ``missing_field``, ``not_a_string``,
    ``lone_surrogate``, ``empty``).
    """
    if not isinstance(record, dict):
        return None, "not_an_object", f"row is a JSON {type(record).__name__}, not an object"
    fields: dict[str, str] = {}
    for name in ("instruction", "input", "output"):
        column = getattr(columns, name)
        value = record.get(column)
        if value is None:
            if name == "input":
                value = ""
            else:
                return None, "missing_field", f"no '{name}' (source column '{column}')"
        if not isinstance(value, str):
            return None, "not_a_string", f"'{name}' (source column '{column}') is {type(value).__name__}, not a string"
        if has_lone_surrogate(value):
            return None, "lone_surrogate", f"'{name}' (source column '{column}') {LONE_SURROGATE_PROBLEM}"
        if name != "input" and not value.strip():
            return None, "empty", f"'{name}' (source column '{column}') is empty after stripping"
        fields[name] = value
    return fields, "", ""


def content_id(instruction: str, input_text: str, output: str) -> str:
    """Stable id: the same content always gets the same id, across runs and machines."""
    digest = hashlib.sha256("\x1f".join((instruction, input_text, output)).encode("utf-8"))
    return digest.hexdigest()[:16]


def raw_id(raw: str) -> str:
    """Id for an invalid row: a hash of its raw text, so it can be found again in the source."""
    return hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:16]


def normalize(text: str) -> str:
    """Unicode-normalised, case-folded, whitespace-collapsed text for exact matching."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def dedup_key(instruction: str, input_text: str) -> int:
    """64-bit key of normalised instruction+input; equal keys are exact duplicates."""
    return _key(f"{normalize(instruction)}\x1f{normalize(input_text)}")


def _key(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8)
    return int(np.frombuffer(digest.digest(), dtype=np.int64)[0])


def embed_text(instruction: str, input_text: str) -> str:
    """What gets embedded: the instruction, plus the input when there is one (as Platypus did)."""
    return f"{instruction} {input_text}" if input_text.strip() else instruction


# Conversations. A one-exchange conversation (no system prompt) is the Alpaca row (user, "", assistant):
# same id, same exact-dedup key, same embedded text, so it meets an equal Alpaca row as its duplicate.
# normalize() folds the separators below (they are whitespace), so joined keys cannot collide.


def conversation_id(messages: list[dict[str, str]]) -> str:
    """Stable content id of a conversation (its roles and texts)."""
    one = single_turn(messages)
    if one is not None:
        return content_id(one[0], "", one[1])
    joined = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


def conversation_dedup_key(users: list[str]) -> int:
    """64-bit key of the normalised user turns: conversations asking the same things are exact duplicates."""
    return _key("\x1e".join(normalize(u) for u in users) + "\x1f")


def conversation_text(users: list[str], embed_turns: str) -> str:
    """What gets embedded of a conversation: its first user turn, or all of them one per line."""
    return users[0] if embed_turns == "first" else "\n".join(users)


def row_text(instruction: str, input_text: str, messages: list[dict[str, str]] | None, embed_turns: str) -> str:
    """The embedded text of a parsed row, Alpaca (``messages`` None) or conversation."""
    if messages is None:
        return embed_text(instruction, input_text)
    return conversation_text(user_turns(messages), embed_turns)


def full_text(instruction: str, input_text: str, output: str, messages: list[dict[str, str]] | None) -> str:
    """Every text of a row, one part per line (the verbatim n-gram check reads it)."""
    if messages is None:
        return f"{instruction}\n{input_text}\n{output}"
    return "\n".join(m["content"] for m in messages)
