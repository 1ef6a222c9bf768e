"""Train's reading of kept/ rows (no Ray): which template, conversations dropped and counted, and
Alpaca rows tokenised exactly as before chat rows existed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from ray.data.block import BlockAccessor

from platypus_ray.core.config import validate_config
from platypus_ray.core.conversation import MESSAGES_TYPE
from platypus_ray.core.errors import UserError
from platypus_ray.samples import sample_rows
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.data import load_tokenizer, resolve_chat_template, tokenize_batch
from platypus_ray.train.prompts import IGNORE_INDEX, tokenize_example

# sha256 of the shipped sample rows' [input_ids, labels] as tokenize_batch gave them before chat
# rows existed (commit 87aa501: no chat template on the tiny tokenizer), cutoff 4096, answers only.
# Changed on purpose (a new sample corpus or tiny tokenizer)? Recompute it at the parent commit.
ALPACA_SAMPLES_SHA = "41f28542d855e711"


def _config(tiny_model: str, **data) -> TrainConfig:
    return validate_config(TrainConfig, {"model": {"name_or_path": tiny_model}, "data": {"path": "kept", **data}})


def _numpy_batch(table: pa.Table) -> dict:
    return BlockAccessor.for_block(table).to_batch_format("numpy")


def test_alpaca_rows_give_the_token_ids_and_labels_of_before(tiny_model):
    rows = sample_rows()
    batch = _numpy_batch(pa.Table.from_pylist(rows))
    tokenizer = load_tokenizer(tiny_model)
    assert tokenizer.chat_template  # the tiny tokenizer has one now: Alpaca rows must not notice
    for cutoff in (64, 4096):
        for train_on_inputs in (False, True):
            out = tokenize_batch(batch, tiny_model, cutoff, train_on_inputs, True).to_pydict()
            expected = [
                tokenize_example(tokenizer, r["instruction"], r["input"], r["output"], cutoff, train_on_inputs)
                for r in rows
            ]
            expected = [e for e in expected if set(e["labels"]) != {IGNORE_INDEX}]
            assert out["input_ids"] == [e["input_ids"] for e in expected]
            assert out["labels"] == [e["labels"] for e in expected]
            assert out["truncated"] == [len(e["input_ids"]) >= cutoff for e in expected]  # the count of before
    out = tokenize_batch(batch, tiny_model, 4096, False, True).to_pydict()
    digest = hashlib.sha256(json.dumps([out["input_ids"], out["labels"]]).encode()).hexdigest()[:16]
    assert digest == ALPACA_SAMPLES_SHA


def test_conversations_are_tokenised_dropped_and_flagged(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    long_question = "Tell me everything about the water cycle. " * 12
    messages = [
        [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "Anyone there?"}],  # no assistant turn: nothing to train
        [{"role": "user", "content": long_question}, {"role": "assistant", "content": "Rain."}],  # prompt fills cutoff
        None,  # an Alpaca row in a folder that also holds conversations
    ]
    table = pa.table(
        {
            "messages": pa.array(messages, type=MESSAGES_TYPE),
            "instruction": [None, None, None, "Add 2 and 3."],
            "input": [None, None, None, ""],
            "output": [None, None, None, "5"],
        }
    )
    out = tokenize_batch(_numpy_batch(table), tiny_model, 48, False, True, chat_template=tokenizer.chat_template)
    out = out.to_pydict()
    assert len(out["input_ids"]) == 2  # two rows dropped: prepare_data counts them as dropped_rows
    alpaca = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}], return_dict=True
    )["input_ids"]
    assert out["input_ids"][1] == alpaca
    assert [tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) for labels in out["labels"]] == [
        "Hello.</s>",
        "5</s>",
    ]
    assert out["truncated"] == [False, False]
    bad = pa.table({"messages": pa.array([[{"role": "tool", "content": "{}"}]], type=MESSAGES_TYPE)})
    with pytest.raises(UserError, match="turn 1: unknown role 'tool'"):
        tokenize_batch(_numpy_batch(bad), tiny_model, 48, False, True, chat_template=tokenizer.chat_template)


def test_which_template_and_where_it_comes_from(tiny_model, tmp_path):
    own = load_tokenizer(tiny_model).chat_template
    assert resolve_chat_template(_config(tiny_model), has_messages=False) is None  # auto on Alpaca rows
    assert resolve_chat_template(_config(tiny_model), has_messages=True) == own
    assert resolve_chat_template(_config(tiny_model, template="chat"), has_messages=False) == own
    with pytest.raises(UserError, match="data.template is alpaca but .* has a 'messages' column"):
        resolve_chat_template(_config(tiny_model, template="alpaca"), has_messages=True)
    plain = own.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    path = tmp_path / "chat.jinja"
    path.write_text(plain)
    assert resolve_chat_template(_config(tiny_model, chat_template=str(path)), has_messages=True) == plain
    assert resolve_chat_template(_config(tiny_model, chat_template=plain), has_messages=True) == plain
    eos_untrained = own.replace(
        "message['content'] + eos_token }}{% endgeneration %}",
        "message['content'] }}{% endgeneration %}{{ eos_token }}",
    )
    with pytest.raises(UserError, match="stop token of an assistant turn untrained"):
        resolve_chat_template(_config(tiny_model, chat_template=eos_untrained), has_messages=True)
    # A tokenizer without a template, and no data.chat_template: say which key to set.
    bare = tmp_path / "bare"
    tokenizer = load_tokenizer(tiny_model)
    saved = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        tokenizer.save_pretrained(bare)
    finally:
        tokenizer.chat_template = saved
    assert not Path(bare, "chat_template.jinja").exists()
    with pytest.raises(UserError, match="has no chat template: set data.chat_template"):
        resolve_chat_template(_config(str(bare), template="chat"), has_messages=False)
    assert np.array_equal(load_tokenizer(str(bare))("x y")["input_ids"], load_tokenizer(tiny_model)("x y")["input_ids"])
