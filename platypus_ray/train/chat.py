"""SFT tokenisation with the model's chat template: every assistant turn and its stop token trained.

The conversation is rendered once with ``tokenizer.apply_chat_template`` (the tokenizer's own
template, or ``data.chat_template``) and tokenised as that call tokenises it. Which tokens
are trained (the assistant mask) comes from one of two sources:

* **generation blocks**: a template that wraps assistant output in ``{% generation %}`` ...
  ``{% endgeneration %}`` names the trained text itself; the mask is exactly
  ``apply_chat_template(..., return_assistant_tokens_mask=True)``'s.
* **prefix renders** (any other template; what axolotl and TRL do): for the assistant message
  at index ``k``, ``messages[:k]`` rendered with the generation prompt ends where the answer
  starts, and ``messages[:k + 1]`` ends after the turn; the text between them, up to and
  including its last stop token, is trained. The difference is taken on the rendered text and
  mapped to the tokens of the one full render by their character offsets (as transformers maps
  generation blocks), so a BPE merge across a turn boundary cannot shift a span. A template
  that renders a prefix differently from the start of the whole conversation (one that rewrites
  earlier turns) is refused: it needs generation blocks.

A stop token is a special or added token (EOS, ``<|eot_id|>``, ``<|im_end|>``): the model must
learn to emit it or it never stops. :func:`check_template` refuses, before any row is
tokenised, a template that leaves it (or the answer) untrained.

Truncation at ``cutoff_len`` keeps the longest prefix that ends with a complete trained span
(every trained assistant turn keeps its stop token); when not even the first answer fits,
the tokens are cut at ``cutoff_len`` as Alpaca rows are. Either way the row counts as truncated.
"""

from __future__ import annotations

import re
from typing import Any

from platypus_ray.core.conversation import Conversation
from platypus_ray.core.errors import UserError
from platypus_ray.train.prompts import IGNORE_INDEX

GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
PROBE = [  # the driver's template check: two answers, so a span ending in the next turn shows up
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six."},
]


def has_generation_blocks(template: str) -> bool:
    return bool(GENERATION_BLOCK.search(template))


def stop_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that can end a turn: the tokenizer's special and added tokens."""
    return frozenset(tokenizer.all_special_ids) | frozenset(tokenizer.added_tokens_decoder)


def _render(tokenizer: Any, messages: list[dict[str, str]], template: str, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_mask(tokenizer: Any, messages: list[dict[str, str]], template: str) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a 0/1 mask over them: 1 = trained."""
    if has_generation_blocks(template):
        out = tokenizer.apply_chat_template(
            messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True
        )
        return list(out["input_ids"]), list(out["assistant_masks"])
    return prefix_mask(tokenizer, messages, template)


def prefix_mask(tokenizer: Any, messages: list[dict[str, str]], template: str) -> tuple[list[int], list[int]]:
    """The assistant mask from prefix renders (for templates without generation blocks)."""
    full = _render(tokenizer, messages, template)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        turn = _render(tokenizer, messages[: k + 1], template)
        prompt = (
            _render(tokenizer, messages[:k], template, generation_prompt=True)
            if k
            else _opening(tokenizer, turn, template)
        )
        if not (turn.startswith(prompt) and full.startswith(turn)):
            raise UserError(
                f"the chat template renders the first {k + 1} messages differently from the start of the whole "
                "conversation, so the assistant turns cannot be found by rendering prefixes; use a template "
                "with {% generation %} blocks around assistant output (data.chat_template)"
            )
        spans.append((len(prompt), len(turn)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    stops, mask = stop_ids(tokenizer), [0] * len(ids)
    for start, end in spans:
        inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < end]  # tokens overlapping the span
        last_stop = max((i for i in inside if ids[i] in stops), default=None)
        for i in inside:
            mask[i] = int(last_stop is None or i <= last_stop)  # none: check_template says so
    return ids, mask


def _opening(tokenizer: Any, turn: str, template: str) -> str:
    """What a conversation that opens with an answer renders before it (no empty conversation
    renders): ``turn`` up to the end of the generation prompt, as a one-message render shows it."""
    probe = [{"role": "user", "content": "?"}]
    header = _render(tokenizer, probe, template, generation_prompt=True)[len(_render(tokenizer, probe, template)) :]
    at = turn.find(header) if header else -1
    return turn[: at + len(header)] if at >= 0 else ""


def _runs(mask: list[int]) -> list[range]:
    """Maximal runs of 1s in ``mask``."""
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append(range(start, i))
            start = None
    return runs


def check_template(tokenizer: Any, template: str) -> None:
    """Refuse a template whose assistant mask misses an answer or its stop token (checked on a probe)."""
    ids, mask = assistant_mask(tokenizer, PROBE, template)
    answers = [m["content"] for m in PROBE if m["role"] == "assistant"]
    runs = _runs(mask)
    trained = [tokenizer.decode([ids[i] for i in run]) for run in runs]
    missing = [a for a in answers if not any(a in text for text in trained)]
    if len(runs) != len(answers) or missing:
        raise UserError(
            f"the chat template trains {len(runs)} spans for {len(answers)} assistant turns "
            f"(answers not trained: {missing}); mark each assistant turn with {{% generation %}} ... "
            "{% endgeneration %} (data.chat_template)"
        )
    stops = stop_ids(tokenizer)
    for run, text in zip(runs, trained):
        if not any(ids[i] in stops for i in run):
            raise UserError(
                f"the chat template leaves the stop token of an assistant turn untrained (trained: {text!r}): "
                "a model trained so never learns to end its turn; put the end-of-turn token (EOS, "
                "<|eot_id|>, ...) inside {% generation %} ... {% endgeneration %}, or render one after each "
                "assistant turn (data.chat_template)"
            )


def tokenize_conversation(
    tokenizer: Any, conversation: Conversation, template: str, cutoff_len: int, train_on_inputs: bool = False
) -> dict[str, Any]:
    """``input_ids``, ``labels`` (-100 outside assistant turns unless ``train_on_inputs``) and
    ``truncated`` (the conversation was longer than ``cutoff_len``)."""
    ids, mask = assistant_mask(tokenizer, conversation.messages(), template)
    truncated = len(ids) > cutoff_len
    if truncated:
        ends = [run.stop for run in _runs(mask) if run.stop <= cutoff_len]
        cut = ends[-1] if ends else cutoff_len
        ids, mask = ids[:cut], mask[:cut]
    labels = list(ids) if train_on_inputs else [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    return {"input_ids": ids, "labels": labels, "truncated": truncated}
