"""Chat-template tokenisation: labels equal the assistant-mask oracle, stop tokens trained, truncation
at turn boundaries, conversations read from kept/ rows (no Ray)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.core.conversation import Conversation, malformed, problem, row_conversation
from platypus_ray.core.errors import UserError
from platypus_ray.devtools.tiny_model import CHAT_TEMPLATE
from platypus_ray.train.chat import assistant_mask, check_template, has_generation_blocks, tokenize_conversation
from platypus_ray.train.prompts import IGNORE_INDEX
from tests.helpers import sample_conversations

CHATML = (  # ChatML (Qwen, OpenHermes): the answer and <|im_end|> in the generation block, the newline after it not
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NO_STOP = (  # renders no end-of-turn token at all: the model would never learn to stop
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
EXTRA = [  # 1, 3 and 5 turns: no assistant at all, a trailing user turn, a system prompt
    [{"role": "user", "content": "Hello?"}],
    [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Ok"}],
    [
        {"role": "system", "content": "Reply in French."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "Merci."},
        {"role": "user", "content": "Bye."},
        {"role": "assistant", "content": "Au revoir."},
    ],
]
CONVERSATIONS = sample_conversations(12) + EXTRA


def without_generation_blocks(template: str) -> str:
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)


@pytest.fixture(scope="module")
def tokenizer():
    from platypus_ray.devtools.tiny_model import train_tokenizer

    return train_tokenizer(vocab_size=512)


@pytest.fixture(scope="module")
def chatml_tokenizer():
    from platypus_ray.devtools.tiny_model import train_tokenizer

    tokenizer = train_tokenizer(vocab_size=512)
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    return tokenizer


@pytest.fixture(params=["tiny", "chatml"])
def case(request, tokenizer, chatml_tokenizer):
    """A tokenizer, its marked template, and its stop token."""
    if request.param == "tiny":
        return tokenizer, CHAT_TEMPLATE, tokenizer.eos_token_id
    return chatml_tokenizer, CHATML, chatml_tokenizer.convert_tokens_to_ids("<|im_end|>")


def oracle(tokenizer, messages, marked: str) -> tuple[list[int], list[int]]:
    """transformers' own assistant mask of a template with generation blocks, as labels."""
    out = tokenizer.apply_chat_template(
        messages, chat_template=marked, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(out["input_ids"])
    return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, out["assistant_masks"])]


def _runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs


@pytest.mark.parametrize("blocks", [True, False], ids=["generation-blocks", "prefix-renders"])
def test_multi_turn_labels_equal_the_assistant_mask_oracle(case, blocks):
    tokenizer, marked, _ = case
    template = marked if blocks else without_generation_blocks(marked)
    assert has_generation_blocks(template) == blocks
    for messages in CONVERSATIONS:
        ids, labels = oracle(tokenizer, messages, marked)
        row = tokenize_conversation(tokenizer, Conversation.from_messages(messages), template, cutoff_len=4096)
        assert row["input_ids"] == ids and row["labels"] == labels and not row["truncated"]


def test_every_assistant_turn_and_its_stop_token_are_trained_and_nothing_else(case):
    tokenizer, marked, stop = case
    for messages in CONVERSATIONS:
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        for template in (marked, without_generation_blocks(marked)):
            labels = tokenize_conversation(tokenizer, Conversation.from_messages(messages), template, 4096)["labels"]
            runs = _runs(labels)
            assert len(runs) == len(answers)
            for run, answer in zip(runs, answers):
                assert run[-1] == stop  # the model learns to end its turn
                assert tokenizer.decode(run[:-1]) == answer  # the answer, and no header or user text


def test_a_template_that_leaves_the_stop_token_untrained_is_refused(tokenizer, chatml_tokenizer):
    check_template(tokenizer, CHAT_TEMPLATE)
    check_template(tokenizer, without_generation_blocks(CHAT_TEMPLATE))
    check_template(chatml_tokenizer, CHATML)
    eos_outside = CHAT_TEMPLATE.replace(
        "{{ message['content'] + eos_token }}{% endgeneration %}",
        "{{ message['content'] }}{% endgeneration %}{{ eos_token }}",
    )
    assert eos_outside != CHAT_TEMPLATE
    with pytest.raises(UserError, match="leaves the stop token of an assistant turn untrained"):
        check_template(tokenizer, eos_outside)
    with pytest.raises(UserError, match="leaves the stop token of an assistant turn untrained"):
        check_template(tokenizer, NO_STOP)  # prefix renders: nothing to stop on


def test_a_template_that_rewrites_earlier_turns_needs_generation_blocks(tokenizer):
    last_only = (  # drops every answer but the last (as templates that strip earlier reasoning do)
        "{% for message in messages %}{% if message['role'] != 'assistant' or loop.last %}"
        "{{ message['role'] + ': ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    with pytest.raises(UserError, match=r"generation %\} blocks"):
        assistant_mask(tokenizer, CONVERSATIONS[1], last_only)


def test_truncation_keeps_whole_turns_or_cuts_the_first_answer(tokenizer):
    messages = EXTRA[2]
    full = tokenize_conversation(tokenizer, Conversation.from_messages(messages), CHAT_TEMPLATE, 4096)
    first_stop = full["labels"].index(tokenizer.eos_token_id) + 1
    # Room for the first answer and part of the second: cut after the first answer's stop token.
    cut = tokenize_conversation(
        tokenizer, Conversation.from_messages(messages), CHAT_TEMPLATE, len(full["input_ids"]) - 2
    )
    assert cut["truncated"] and cut["input_ids"] == full["input_ids"][:first_stop]
    assert cut["labels"] == full["labels"][:first_stop]
    # Not even the first answer fits: cut at cutoff_len, as an Alpaca row is (its answer partly trained).
    cut = tokenize_conversation(tokenizer, Conversation.from_messages(messages), CHAT_TEMPLATE, first_stop - 2)
    assert cut["truncated"] and cut["input_ids"] == full["input_ids"][: first_stop - 2]
    # The prompt alone fills cutoff_len: nothing to train (tokenize_batch drops and counts such rows).
    cut = tokenize_conversation(tokenizer, Conversation.from_messages(messages), CHAT_TEMPLATE, 8)
    assert cut["truncated"] and set(cut["labels"]) == {IGNORE_INDEX}


TEXT = st.text(alphabet=st.sampled_from(list("abcdefgh xyz.,?!\n\t0123é漢")), max_size=40)


@st.composite
def conversations(draw):
    system = draw(st.one_of(st.none(), TEXT))
    turns = [
        {"role": draw(st.sampled_from(["user", "assistant"])), "content": draw(TEXT)}
        for _ in range(draw(st.integers(1, 6)))
    ]
    return ([{"role": "system", "content": system}] if system is not None else []) + turns


@settings(max_examples=60, deadline=None)
@given(messages=conversations(), cutoff=st.integers(8, 200))
def test_random_conversations_match_the_oracle_and_truncate_at_a_trained_span_end(tokenizer, messages, cutoff):
    ids, labels = oracle(tokenizer, messages, CHAT_TEMPLATE)
    answers = [m for m in messages if m["role"] == "assistant"]
    conversation = Conversation.from_messages(messages)
    for template in (CHAT_TEMPLATE, without_generation_blocks(CHAT_TEMPLATE)):
        row = tokenize_conversation(tokenizer, conversation, template, 4096)
        assert (row["input_ids"], row["labels"]) == (ids, labels)
        runs = _runs(labels)
        assert len(runs) == len(answers) and all(run[-1] == tokenizer.eos_token_id for run in runs)
        cut = tokenize_conversation(tokenizer, conversation, template, cutoff)
        n = len(cut["input_ids"])
        assert cut["truncated"] == (len(ids) > cutoff) and n <= cutoff
        assert cut["input_ids"] == ids[:n] and cut["labels"] == labels[:n]
        ends = [
            i + 1
            for i in range(len(ids))
            if labels[i] != IGNORE_INDEX and (i + 1 == len(ids) or labels[i + 1] == IGNORE_INDEX)
        ]
        if cut["truncated"]:  # the last trained span that fits ends the row; none fits: a hard cut
            fitting = [e for e in ends if e <= cutoff]
            assert n == (fitting[-1] if fitting else cutoff)


def test_rows_are_read_as_conversations():
    alpaca = row_conversation({"instruction": "Summarize.", "input": "Some text.", "output": "Short."})
    assert alpaca.messages() == [
        {"role": "user", "content": "Summarize. Some text."},  # joined as Platypus joined them
        {"role": "assistant", "content": "Short."},
    ]
    no_input = row_conversation({"messages": None, "instruction": "Add 2 and 3.", "input": "", "output": "5"})
    assert no_input.messages()[0] == {"role": "user", "content": "Add 2 and 3."}
    chat = row_conversation({"messages": EXTRA[2], "instruction": None})
    assert chat.system == "Reply in French." and chat.messages() == EXTRA[2]
    assert problem([{"role": "user", "content": "x"}]) == "no assistant turn"
    assert malformed([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]) == (
        "turn 2: unknown role 'tool' (valid: system, user, assistant)"
    )
    assert malformed([{"role": "assistant", "content": 3}]) == "turn 1 (assistant): content is int, not text"
    with pytest.raises(ValueError, match="turn 2: unknown role"):
        Conversation.from_messages([{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}])
