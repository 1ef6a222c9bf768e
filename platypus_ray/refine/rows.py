"""The canonical instruction row: validation, content id, exact-dedup key, embedded text."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import numpy as np

from platypus_ray.core.unicode_checks import LONE_SURROGATE_PROBLEM, has_lone_surrogate
from platypus_ray.refine.config import ColumnMapping

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
    digest = hashlib.blake2b(f"{normalize(instruction)}\x1f{normalize(input_text)}".encode(), digest_size=8)
    return int(np.frombuffer(digest.digest(), dtype=np.int64)[0])


def embed_text(instruction: str, input_text: str) -> str:
    """What gets embedded: the instruction, plus the input when there is one (as Platypus did)."""
    return f"{instruction} {input_text}" if input_text.strip() else instruction
