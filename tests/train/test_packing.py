"""Sample packing without Ray: bin packing, per-row loss equal to unpacked, no attention across rows
(Alpaca rows and multi-turn conversations alike)."""

from __future__ import annotations

import pytest
import torch

from platypus_ray.samples import sample_rows
from platypus_ray.train.packing import best_fit_decreasing, efficiency, pack_batch
from platypus_ray.train.prompts import IGNORE_INDEX
from tests.helpers import sample_conversations


def test_best_fit_decreasing_fills_bins_without_splitting_rows():
    lengths = [700, 300, 500, 500, 200, 100, 1024, 50]
    bins = best_fit_decreasing(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # every row exactly once
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    assert len(bins) == 4  # 3374 tokens: the fewest 1024-token sequences that can hold them
    assert bins == best_fit_decreasing(lengths, 1024)  # deterministic


@pytest.fixture(scope="module", params=["alpaca", "chat"])
def rows(request, tiny_model):
    """Six tokenised rows: Alpaca rows with every label counted (train_on_inputs), or conversations of
    1-2 exchanges with only their answers and stop tokens counted (the tiny model's chat template)."""
    from platypus_ray.train.data import load_tokenizer, tokenize_batch

    if request.param == "alpaca":
        data = sample_rows()[:6]
        batch = {k: [r[k] for r in data] for k in ("instruction", "input", "output")}
        return tokenize_batch(batch, tiny_model, 128, True, True).to_pydict()
    batch = {"messages": sample_conversations(6, max_pairs=2)}
    template = load_tokenizer(tiny_model).chat_template
    return tokenize_batch(batch, tiny_model, 512, False, True, chat_template=template).to_pydict()


def _token_losses(model, ids, labels, position_ids=None):
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor([ids]),
            position_ids=None if position_ids is None else torch.tensor([position_ids]),
            use_cache=False,
        ).logits[0]
    target = torch.tensor(labels[1:])
    losses = torch.nn.functional.cross_entropy(logits[:-1].double(), target.clamp(min=0), reduction="none")
    return logits, torch.where(target == IGNORE_INDEX, torch.zeros_like(losses), losses)


def test_packed_per_row_loss_equals_unpacked_and_rows_do_not_attend_to_each_other(tiny_model, rows):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    packed = pack_batch(rows, cutoff_len=1024, seed=0).to_pylist()
    assert len(packed) == 1 and packed[0]["num_rows"] == 6  # six short rows share one sequence
    seq = packed[0]
    starts = [i for i, p in enumerate(seq["position_ids"]) if p == 0]
    assert len(starts) == 6 and efficiency(seq["num_tokens"], 1, 1024) == seq["num_tokens"] / 1024
    logits, losses = _token_losses(model, seq["input_ids"], seq["labels"], seq["position_ids"])
    bounds = [*starts, len(seq["input_ids"])]
    for start, end in zip(bounds, bounds[1:]):
        ids = seq["input_ids"][start:end]
        k = rows["input_ids"].index(ids)  # the same row, unpacked
        _, alone = _token_losses(model, rows["input_ids"][k], rows["labels"][k])
        # Row sum over its own targets (labels[start] is -100 in the packed copy: no cross-row target).
        assert float(losses[start : end - 1].sum()) == pytest.approx(float(alone.sum()), abs=1e-4)

    # Change every token of the first row: no other row's logits move.
    changed = list(seq["input_ids"])
    changed[bounds[0] : bounds[1]] = [(t + 7) % model.config.vocab_size for t in changed[bounds[0] : bounds[1]]]
    after, _ = _token_losses(model, changed, seq["labels"], seq["position_ids"])
    assert (after[bounds[0] : bounds[1]] - logits[bounds[0] : bounds[1]]).abs().max() > 1e-3
    assert torch.allclose(after[bounds[1] :], logits[bounds[1] :], atol=1e-5)
