"""The Alpaca prompt template and SFT tokenisation, exactly as Platypus trained.

Platypus (``finetune.py`` + alpaca-lora's ``templates/alpaca.json``) builds the prompt
with the with-input or no-input variant, tokenises prompt+output jointly with truncation to
``cutoff_len``, appends EOS when there is room, and masks the prompt's tokens to -100 by
the length of the prompt tokenised on its own. Note: Platypus's ``tokenize()`` appended EOS
to every example whatever its ``add_eos_token`` flag said (the flag only moved the mask
boundary), so ``add_eos_token: true`` here is the behaviour its models were trained with.
"""

from __future__ import annotations

from typing import Any

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
IGNORE_INDEX = -100


def build_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt up to and including ``### Response:\\n`` (the model continues from here)."""
    if input_text:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def tokenize_example(
    tokenizer: Any,
    instruction: str,
    input_text: str,
    output: str,
    cutoff_len: int,
    train_on_inputs: bool = False,
    add_eos_token: bool = True,
) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` (prompt masked unless ``train_on_inputs``)."""
    prompt = build_prompt(instruction, input_text)
    ids = tokenizer(prompt + output, truncation=True, max_length=cutoff_len, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if add_eos_token and len(ids) < cutoff_len and (not ids or ids[-1] != eos):
        ids = ids + [eos]
    labels = list(ids)
    if not train_on_inputs:
        prompt_len = len(
            tokenizer(prompt, truncation=True, max_length=cutoff_len, add_special_tokens=True)["input_ids"]
        )
        labels[:prompt_len] = [IGNORE_INDEX] * min(prompt_len, len(labels))
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
