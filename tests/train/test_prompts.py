"""Alpaca template and prompt masking: exact strings and exact label positions."""

from __future__ import annotations

import pytest

from platypus_ray.train.prompts import IGNORE_INDEX, build_prompt, tokenize_example


@pytest.fixture(scope="module")
def tokenizer():
    from platypus_ray.devtools.tiny_model import train_tokenizer

    return train_tokenizer(vocab_size=512)


def test_template_strings_match_alpaca_lora_exactly():
    assert build_prompt("Add 2 and 3.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    )
    assert build_prompt("Summarize.", "Some text.") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSummarize.\n\n### Input:\nSome text.\n\n### Response:\n"
    )


def test_prompt_tokens_are_masked_and_response_plus_eos_is_learned(tokenizer):
    prompt = build_prompt("Add 2 and 3.")
    example = tokenize_example(tokenizer, "Add 2 and 3.", "", "The sum is 5.", cutoff_len=512)
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids, labels = example["input_ids"], example["labels"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]  # response and EOS are learned
    assert tokenizer.decode(ids[len(prompt_ids) :], skip_special_tokens=True) == "The sum is 5."
    assert example["attention_mask"] == [1] * len(ids)


def test_train_on_inputs_and_no_eos(tokenizer):
    example = tokenize_example(
        tokenizer, "Say hi.", "", "hi", cutoff_len=512, train_on_inputs=True, add_eos_token=False
    )
    assert example["labels"] == example["input_ids"]
    assert example["input_ids"][-1] != tokenizer.eos_token_id


def test_truncation_at_cutoff_keeps_prompt_mask_and_drops_eos(tokenizer):
    full = tokenize_example(tokenizer, "Write a story.", "", "once upon a time " * 40, cutoff_len=10_000)
    cut = tokenize_example(tokenizer, "Write a story.", "", "once upon a time " * 40, cutoff_len=48)
    assert len(cut["input_ids"]) == 48 and cut["input_ids"] == full["input_ids"][:48]
    assert cut["input_ids"][-1] != tokenizer.eos_token_id  # no room for EOS: not forced in (as Platypus)
    prompt_len = len(tokenizer(build_prompt("Write a story."))["input_ids"])
    assert cut["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len and cut["labels"][prompt_len] != IGNORE_INDEX
