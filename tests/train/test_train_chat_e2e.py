"""Chat-format data end to end: real Ray Data and Ray Train, ZeRO-3 on 2 CPU workers, the tiny LLaMA."""

from __future__ import annotations

from pathlib import Path

import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.devtools.tiny_model import CHAT_TEMPLATE
from platypus_ray.train import run
from platypus_ray.train.adapter import check_adapter
from platypus_ray.train.config import TrainConfig
from tests.helpers import sample_conversations, train_raw, write_chat_kept

pytestmark = pytest.mark.slow


def test_conversations_train_with_a_chat_template_file_and_the_adapter_carries_it(ray_session, tiny_model, tmp_path):
    """A messages column picks the chat template (data.template: auto); data.chat_template names a
    .jinja file without generation blocks (prefix renders), which the exported adapter's tokenizer keeps."""
    from transformers import AutoTokenizer

    kept = write_chat_kept(tmp_path / "kept", sample_conversations(60, max_pairs=3))
    plain = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    (tmp_path / "chat.jinja").write_text(plain)
    raw = train_raw(
        tiny_model, kept, str(tmp_path / "train"), "chat", training={"max_steps": 6, "eval_every": 3, "warmup_steps": 1}
    )
    raw["data"].update(cutoff_len=256, chat_template=str(tmp_path / "chat.jinja"))
    result = run(validate_config(TrainConfig, raw))
    plan = result.plan
    assert plan.template == "chat" and plan.train_rows + plan.validation_rows == 60 and plan.dropped_rows == 0
    assert result.metrics["step"] == 6
    losses = [h["loss"] for h in result.history if "loss" in h]
    evals = [h["eval_loss"] for h in result.history if "eval_loss" in h]
    assert len(losses) == 6 and len(evals) == 2
    assert evals[-1] < evals[0]
    check_adapter(result.adapter_path)
    assert Path(result.adapter_path, "chat_template.jinja").read_text() == plain
    assert AutoTokenizer.from_pretrained(result.adapter_path).chat_template == plain
