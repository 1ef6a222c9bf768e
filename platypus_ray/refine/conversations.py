"""Conversation sources: the row shape of a file (Alpaca, OpenAI ``messages``, ShareGPT
``conversations``) and the validation of one conversation into canonical messages.

The rules, each broken one an ``invalid`` ledger row whose detail names the turn:

* the turns are a list of objects, the role and text under the shape's keys (``role`` /
  ``content``, ShareGPT's ``from`` / ``value``; ``columns.role`` / ``columns.content`` rename
  them); role names are the canonical ones plus ShareGPT's (``human``, ``gpt``), and
  ``columns.roles`` adds more;
* a system turn may come first only; an empty one is dropped (it carries nothing);
* then user and assistant alternate, user first, assistant last: a trailing user turn has no
  answer to train on, and common chat templates (Llama 2, Mistral) refuse other orders;
* tool turns (``tool``, ``function``, ...) are refused: their calls and results need a
  template that renders them, which this project does not carry yet;
* every text is a string, not empty after stripping, with no lone surrogate.
"""

from __future__ import annotations

from typing import Any

from platypus_ray.core.conversation import MESSAGES
from platypus_ray.core.unicode_checks import LONE_SURROGATE_PROBLEM, has_lone_surrogate
from platypus_ray.refine.config import ColumnMapping

ROLE_NAMES = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "human": "user",  # ShareGPT
    "gpt": "assistant",
    "chatgpt": "assistant",
}
TOOL_ROLES = frozenset({"tool", "function", "function_call", "function_response", "ipython", "observation"})

Messages = list[dict[str, str]]


def record_shape(record: Any, columns: ColumnMapping) -> str:
    """One record's shape: ``alpaca`` when it has the instruction and output columns (a messages
    key beside them is extra data), else ``messages`` / ``sharegpt`` by their columns, else ``alpaca``."""
    if isinstance(record, dict) and not (columns.instruction in record and columns.output in record):
        if columns.messages in record:
            return "messages"
        if columns.conversations in record:
            return "sharegpt"
    return "alpaca"


def detect_shape(head: list[Any], columns: ColumnMapping) -> str:
    """A file's shape from its first objects: the most common record shape (ties: the first
    record's), so one malformed first record does not decide for the file."""
    shapes = [record_shape(record, columns) for record in head]
    if not shapes:
        return "alpaca"
    return max(dict.fromkeys(shapes), key=shapes.count)


def validate_conversation(record: Any, shape: str, columns: ColumnMapping) -> tuple[Messages | None, str, str]:
    """Map a raw record of a conversation shape to canonical messages (a system prompt first when
    there is one) or explain why it is invalid: ``(messages, reason, detail)``, as
    :func:`~platypus_ray.refine.rows.validate_record` for Alpaca rows."""
    if not isinstance(record, dict):
        return None, "not_an_object", f"row is a JSON {type(record).__name__}, not an object"
    column = columns.messages if shape == MESSAGES else columns.conversations
    turns = record.get(column)
    if turns is None:
        return None, "missing_field", f"no '{column}' (the {shape} list of turns)"
    if not isinstance(turns, list):
        return None, "not_a_list", f"'{column}' is {type(turns).__name__}, not a list of turns"
    if not turns:
        return None, "empty", f"'{column}' has no turns"
    role_key = columns.role or ("role" if shape == MESSAGES else "from")
    text_key = columns.content or ("content" if shape == MESSAGES else "value")
    names = {**ROLE_NAMES, **columns.roles}
    messages: Messages = []
    for k, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            return None, "malformed_turn", f"turn {k} is a {type(turn).__name__}, not an object"
        name = turn.get(role_key)
        role = names.get(name) if isinstance(name, str) else None
        if role is None:
            if isinstance(name, str) and name in TOOL_ROLES:  # a list or dict role is unknown, not unhashable
                return None, "tool_turn", f"turn {k}: tool turns ('{name}') are not supported; remove them"
            return (
                None,
                "unknown_role",
                (
                    f"turn {k}: role {name!r} (key '{role_key}') is not one of {', '.join(sorted(names))}; "
                    "map it with columns.roles"
                ),
            )
        where = f"turn {k} ({role})"
        text = turn.get(text_key)
        if not isinstance(text, str):
            return None, "not_a_string", f"{where}: '{text_key}' is {type(text).__name__}, not a string"
        if has_lone_surrogate(text):
            return None, "lone_surrogate", f"{where}: '{text_key}' {LONE_SURROGATE_PROBLEM}"
        if role == "system" and k == 1:
            if text.strip():
                messages.append({"role": role, "content": text})
            continue
        answered = len(messages) - (messages[0]["role"] == "system" if messages else 0)
        expected = "user" if answered % 2 == 0 else "assistant"
        if role != expected:
            why = "a system turn comes first only" if role == "system" else "user and assistant alternate, user first"
            return None, "turn_order", f"{where}: expected {expected} ({why})"
        if not text.strip():
            return None, "empty", f"{where}: '{text_key}' is empty after stripping"
        messages.append({"role": role, "content": text})
    last = len(turns)
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no_assistant_turn", f"turn {last}: no assistant turn in the conversation"
    if messages[-1]["role"] != "assistant":
        return None, "ends_with_user", f"turn {last} (user): the conversation ends without an assistant answer"
    return messages, "", ""


def user_turns(messages: Messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def single_turn(messages: Messages) -> tuple[str, str] | None:
    """(user, assistant) of a conversation that is one Alpaca row (no system prompt, one exchange), else None."""
    if len(messages) == 2 and messages[0]["role"] == "user":
        return messages[0]["content"], messages[1]["content"]
    return None
