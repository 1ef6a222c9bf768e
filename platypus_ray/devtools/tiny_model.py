"""``platypus-ray make-tiny-model --out DIR``: a tiny LLaMA and a locally trained tokenizer.

Tests and ``make demo`` train this instead of LLaMA-2: the same architecture (RMSNorm,
rotary attention with grouped KV heads, gate/up/down MLP), a few layers wide, saved with
``save_pretrained`` so every code path that loads a hub model loads it the same way.
The byte-level BPE tokenizer is trained on the shipped sample corpus in Alpaca format and
carries a small chat template of its own (:data:`CHAT_TEMPLATE`), saved with it as a hub
model's is, so ``data.template: chat`` runs on the tokenizer's template as it would on a real
model's. The template's role markers are plain text (no new tokens) and its stop token is
``</s>``: the vocabulary, and so every Alpaca token id, is what it was without a template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from platypus_ray.core.config import StrictModel
from platypus_ray.core.outputs import replaced_atomically
from platypus_ray.core.stage import Output, Stage
from platypus_ray.samples import sample_rows
from platypus_ray.train.prompts import build_prompt

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# Each assistant answer and its stop token in a generation block: return_assistant_tokens_mask's oracle.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def training_texts() -> list[str]:
    """Alpaca-formatted sample rows, so template tokens get their own merges."""
    return [build_prompt(r["instruction"], r["input"]) + r["output"] for r in sample_rows()]


def train_tokenizer(vocab_size: int = 1024, max_length: int = 512):
    """Byte-level BPE (any text encodes, no unknowns) with LLaMA's special tokens; BOS is
    prepended on encode, EOS is left to the SFT formatting, padding is a separate token; the
    chat template is :data:`CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_texts(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATE,
    )


def pretrain(model, tokenizer, steps: int, seed: int, batch_size: int = 8, max_tokens: int = 128) -> None:
    """A few hundred AdamW steps of next-token prediction on the sample texts (seconds on a CPU)."""
    import torch

    texts = training_texts()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        picks = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = tokenizer(
            [texts[i] for i in picks], return_tensors="pt", padding=True, truncation=True, max_length=max_tokens
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


class TinyModelConfig(StrictModel):
    """Shape of the tiny LLaMA (``--out DIR`` and friends on the command line)."""

    out: str = Field("out/tiny-llama", description="the folder the model and its tokenizer are written to")
    hidden_size: int = Field(64, ge=8, description="hidden width")
    intermediate_size: int = Field(176, ge=8, description="MLP width")
    layers: int = Field(2, ge=1, description="decoder layers")
    heads: int = Field(4, ge=1, description="attention heads")
    kv_heads: int = Field(2, ge=1, description="key/value heads (grouped-query attention)")
    max_length: int = Field(512, ge=16, description="the longest sequence (max_position_embeddings, the tokenizer's)")
    pretrain_steps: int = Field(
        200,
        ge=0,
        description="full-parameter steps on the sample corpus, so LoRA adapts a model that already knows the format",
    )
    seed: int = Field(0, description="seeds the weights and the pretraining")


@dataclass
class TinyModelResult:
    out: Path
    parameters: int

    def summary(self) -> str:
        return f"make-tiny-model: saved a {self.parameters:,}-parameter LLaMA and its tokenizer to {self.out}"


class TinyModelStage(Stage[TinyModelConfig, None, TinyModelResult]):
    """Nothing in; a model folder (``out``: weights, config, tokenizer) out."""

    name = "make-tiny-model"
    config = TinyModelConfig

    def outputs(self, cfg: TinyModelConfig) -> list[Output]:
        return [Output("out", cfg.out)]

    def execute(self, cfg: TinyModelConfig, checked: None) -> TinyModelResult:
        return _build(cfg)


STAGE = TinyModelStage()
run = STAGE.run


def _build(cfg: TinyModelConfig) -> TinyModelResult:
    """Build, save and return the folder of a randomly initialised tiny LLaMA + tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(cfg.out)
    tokenizer = train_tokenizer(max_length=cfg.max_length)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    pretrain(model, tokenizer, cfg.pretrain_steps, cfg.seed)
    with replaced_atomically(cfg.out, "make-tiny-model") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return TinyModelResult(out, sum(p.numel() for p in model.parameters()))
