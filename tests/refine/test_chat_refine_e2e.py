"""Conversations end to end on real Ray: messages (JSONL) and ShareGPT (Parquet, list-of-struct)
files refine to the same conversations, meet Alpaca rows as exact duplicates, lose a benchmark
question hidden in a later user turn, and train reads the kept/ folder with the chat template."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.refine import RefineConfig, run

pytestmark = pytest.mark.slow

SALIVA = "Which enzyme in human saliva begins the digestion of starch in the mouth?"
PARTY = (
    "I am planning a birthday party for my daughter next weekend in our small garden and I need ideas "
    "for outdoor games that ten children aged six to eight can play safely."
)
FRUIT = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Apple."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Pear."},
]
CONVERSATIONS = [
    FRUIT,  # 0 kept, multi-turn with a system prompt
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [  # 2: the benchmark question, paraphrased, in the third turn
        {"role": "user", "content": PARTY},
        {"role": "assistant", "content": "Try a treasure hunt and a sack race."},
        {"role": "user", "content": "What enzyme found in saliva starts breaking down starch in the mouth?"},
        {"role": "assistant", "content": "Amylase."},
    ],
]
BAD = [
    {"messages": FRUIT[1:4]},  # 3: ends with the user
    {"messages": [FRUIT[1], {"role": "tool", "content": "{}"}]},  # 4: tool turn
]
ALPACA = [
    {"instruction": "Name a color.", "input": "", "output": "Red."},
    {"instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."},
]
SHAREGPT_NAMES = {"system": "system", "user": "human", "assistant": "gpt"}


@pytest.fixture(scope="module")
def refined(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    with open(root / "messages.jsonl", "w") as handle:
        for record in [{"messages": c} for c in CONVERSATIONS] + BAD:
            handle.write(json.dumps(record) + "\n")
    shared = [[{"from": SHAREGPT_NAMES[m["role"]], "value": m["content"]} for m in c] for c in CONVERSATIONS]
    pq.write_table(pa.table({"conversations": shared}), root / "sharegpt.parquet")
    (root / "alpaca.json").write_text(json.dumps(ALPACA))
    (root / "mmlu").mkdir()
    with open(root / "mmlu" / "bio_test.csv", "w", newline="") as handle:
        csv.writer(handle).writerow([SALIVA, "Amylase", "Pepsin", "Lipase", "Trypsin", "A"])
    cfg = validate_config(
        RefineConfig,
        {
            "sources": [
                {"path": str(root / "messages.jsonl"), "name": "messages"},
                {"path": str(root / "sharegpt.parquet"), "name": "sharegpt"},
                {"path": str(root / "alpaca.json"), "name": "alpaca", "shape": "alpaca"},
            ],
            "benchmarks": [{"path": str(root / "mmlu"), "format": "mmlu_csv", "name": "mmlu"}],
            "embedding": {"batch_size": 8, "actors": 1, "cache": False},
            "output": str(root / "out"),
        },
    )
    return run(cfg), cfg


def test_every_row_lands_where_expected(refined):
    result, _ = refined
    ledger = pq.read_table(result.ledger_path).to_pylist()
    got = {(r["source"], r["source_index"]): (r["status"], r["reason"], r["matched_source"]) for r in ledger}
    assert got == {
        ("messages", 0): ("kept", "", ""),
        ("messages", 1): ("removed", "exact_duplicate", "alpaca"),  # the longer answer wins, across shapes
        ("messages", 2): ("removed", "contaminated", ""),
        ("messages", 3): ("invalid", "ends_with_user", ""),
        ("messages", 4): ("invalid", "tool_turn", ""),
        ("sharegpt", 0): ("removed", "exact_duplicate", "messages"),  # the same conversations: the same ids
        ("sharegpt", 1): ("removed", "exact_duplicate", "alpaca"),
        ("sharegpt", 2): ("removed", "exact_duplicate", "messages"),
        ("alpaca", 0): ("kept", "", ""),
        ("alpaca", 1): ("kept", "", ""),
    }
    by_key = {(r["source"], r["source_index"]): r for r in ledger}
    assert [by_key[("sharegpt", k)]["id"] for k in range(3)] == [by_key[("messages", k)]["id"] for k in range(3)]
    assert by_key[("messages", 2)]["matched_id"] == "mmlu/bio_test:0"
    # a paraphrase: no shared 13-gram; both embedding signals (MiniLM and use-multilingual) find it
    assert by_key[("messages", 2)]["signal"] == "embedding+multilingual"
    assert (
        by_key[("messages", 3)]["detail"] == "line 4: turn 3 (user): the conversation ends without an assistant answer"
    )


def test_kept_holds_conversations_and_alpaca_columns_and_train_reads_it(refined, tiny_model):
    from platypus_ray.train.config import TrainConfig
    from platypus_ray.train.data import prepare_data

    result, _ = refined
    kept = pq.read_table(result.kept_path)
    assert kept.column_names == ["id", "instruction", "input", "output", "data_source", "messages"]
    rows = kept.to_pylist()
    assert rows[0]["messages"] == FRUIT and rows[0]["instruction"] is None
    assert [(r["instruction"], r["messages"]) for r in rows[1:]] == [(a["instruction"], None) for a in ALPACA]

    data_cfg = {"path": str(result.kept_path), "val_size": 0}
    train = validate_config(TrainConfig, {"model": {"name_or_path": tiny_model}, "data": data_cfg})
    data = prepare_data(train)
    assert data.chat_template is not None  # auto: the messages column means the chat template
    assert (data.train_rows, data.dropped_rows) == (3, 0)
