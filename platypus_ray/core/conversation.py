"""The canonical training row: a conversation (an optional system prompt, then turns ``{role, content}``).

In ``kept/`` Parquet a conversation is the ``messages`` column, a list of ``{role, content}``
structs in OpenAI's shape (a system prompt is a leading ``system`` message). A row whose
``messages`` is null, or a folder without that column, is an Alpaca row (``instruction``,
``input``, ``output``): the one-turn case, ``instruction`` and ``input`` joined by one space
into the user turn (as Platypus joined them; an empty ``input`` adds nothing) and ``output``
the assistant turn. Refine and train share this module; it imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

ROLES = ("system", "user", "assistant")
MESSAGES = "messages"  # the kept/ column that holds conversations
ALPACA_COLUMNS = ("instruction", "input", "output")
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    """An optional system prompt and the turns after it."""

    turns: tuple[Turn, ...]
    system: str | None = None

    def messages(self) -> list[dict[str, str]]:
        """OpenAI-style messages, what ``apply_chat_template`` takes (the system prompt first)."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [{"role": t.role, "content": t.content} for t in self.turns]

    @classmethod
    def from_alpaca(cls, instruction: str, input_text: str | None, output: str) -> Conversation:
        """The one-turn conversation of an Alpaca row."""
        user = f"{instruction} {input_text}" if input_text else instruction
        return cls((Turn("user", user), Turn("assistant", output)))

    @classmethod
    def from_messages(cls, messages: Iterable[Mapping[str, Any]]) -> Conversation:
        """Parse OpenAI-style messages; a leading ``system`` message becomes the system prompt.
        Raises ``ValueError`` naming the turn when one is malformed (a conversation without an
        assistant turn parses: it has nothing to train, and train drops and counts it)."""
        messages = list(messages)
        reason = malformed(messages)
        if reason:
            raise ValueError(reason)
        system = None
        if messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        return cls(tuple(Turn(m["role"], m["content"]) for m in messages), system)


def malformed(messages: list[Mapping[str, Any]]) -> str | None:
    """Why ``messages`` cannot be read as a conversation (naming the turn), or None."""
    if not messages:
        return "no turns"
    for k, message in enumerate(messages, start=1):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"turn {k}: unknown role {role!r} (valid: {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"turn {k} ({role}): content is {type(content).__name__}, not text"
    return None


def problem(messages: list[Mapping[str, Any]]) -> str | None:
    """Why ``messages`` is not a trainable conversation (naming the turn), or None."""
    reason = malformed(messages)
    if reason is None and not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    return reason


def row_conversation(row: Mapping[str, Any]) -> Conversation:
    """The conversation of one ``kept/`` row: its ``messages`` when set, else its Alpaca columns."""
    messages = row.get(MESSAGES)
    if messages is not None:
        return Conversation.from_messages(messages)
    if row.get("instruction") is None or row.get("output") is None:
        raise ValueError(f"no {MESSAGES} and no instruction/output")
    return Conversation.from_alpaca(row["instruction"], row.get("input") or "", row["output"])
