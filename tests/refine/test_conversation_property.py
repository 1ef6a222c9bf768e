"""Random conversations (1-6 turns, random roles and texts, some malformed) through the parser,
exact dedup and the ledger counts, no Ray: every input row is accounted for exactly once, a row
is valid exactly when an independent statement of the rules says so, and every turn-level
reason names a turn that exists."""

from __future__ import annotations

import json
import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from platypus_ray.refine.config import ColumnMapping
from platypus_ray.refine.input_rows import exact_winners
from platypus_ray.refine.ledger import INVALID, Decisions, summarize
from platypus_ray.refine.sources import SourceFile, parse_source_file

CANONICAL = {"user": "u", "human": "u", "assistant": "a", "gpt": "a", "system": "s"}
ROLES = [*CANONICAL, "tool", "robot", None]
TEXTS = st.one_of(
    st.sampled_from(["Hi.", "Name a fruit.", "Apple.", "Why?", "  ", "", "Pear and plum."]),
    st.integers(),
    st.none(),
)
TURN = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": TEXTS}),
    st.just("not a turn"),
)
ROW = st.one_of(
    st.lists(TURN, min_size=1, max_size=6).map(lambda turns: {"messages": turns}),
    st.sampled_from([{"messages": []}, {"messages": "hi"}, {"other": 1}, "a string row"]),
)
TURN_REASONS = {"malformed_turn", "unknown_role", "tool_turn", "not_a_string", "turn_order", "no_assistant_turn"}
TURN_REASONS |= {"ends_with_user", "lone_surrogate"}


def valid_by_rules(record) -> bool:
    """The conversation rules of refine/conversations.py, said as a regular expression over roles."""
    turns = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        return False
    if any(t["role"] not in CANONICAL or not isinstance(t["content"], str) for t in turns):
        return False
    roles = "".join(CANONICAL[t["role"]] for t in turns)
    blank = [not t["content"].strip() for t in turns]
    if roles.startswith("s") and blank[0]:
        roles, blank = roles[1:], blank[1:]  # an empty system prompt is dropped
    return bool(re.fullmatch(r"s?(ua)+", roles)) and not any(b for r, b in zip(roles, blank) if r in "ua")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=12), shape=st.sampled_from(["auto", "messages"]))
def test_every_conversation_is_accounted_for_once_with_a_reason_naming_its_turn(tmp_path, rows, shape):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sf = SourceFile("src", str(path), 0, "jsonl", ColumnMapping().model_dump(), shape=shape)
    parsed = parse_source_file(sf)
    out = parsed.to_pylist()
    assert [r["row_in_file"] for r in out] == list(range(len(rows)))
    objects = [r for r in rows if isinstance(r, dict)]
    detected = "messages" if shape == "messages" or (objects and "messages" in objects[0]) else "alpaca"
    for record, row in zip(rows, out):
        assert row["valid"] == (row["reason"] == "")
        if detected == "messages":
            assert row["valid"] == valid_by_rules(record), (record, row["reason"], row["detail"])
        if row["reason"] in TURN_REASONS:
            turn = int(re.search(r": turn (\d+)\b", row["detail"]).group(1))
            assert 1 <= turn <= len(record["messages"])
        if row["valid"]:
            assert row["messages"] == [
                {"role": {"u": "user", "a": "assistant", "s": "system"}[CANONICAL[t["role"]]], "content": t["content"]}
                for t in record["messages"]
                if t["content"].strip()
            ]

    meta = {
        name: parsed[name].to_numpy(zero_copy_only=False)
        for name in ("source", "valid", "reason", "dedup_key", "output_len")
    }
    decisions = Decisions.start(meta)
    valid = np.flatnonzero(meta["valid"])
    losers, survivors, _ = exact_winners(meta["dedup_key"][valid], meta["output_len"][valid], valid)
    decisions.remove(losers[0], "exact_duplicate", matched=losers[1], score=1.0)
    stats = summarize(decisions, 0, 0.0, {}, ["src"], [])  # raises unless kept + invalid + removed = input rows
    assert stats["input_rows"] == len(rows) and stats["kept"] == len(survivors)
    assert np.all(decisions.status[meta["valid"] == 0] == INVALID)
    assert len(set(meta["dedup_key"][survivors])) == len(survivors)  # one survivor per exact-dedup key
