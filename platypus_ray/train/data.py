"""Training data in Ray Data: read ``kept/``, hold out validation rows, tokenise with the Alpaca or chat template.

Rows are read as :mod:`platypus_ray.core.conversation` defines them: the ``messages`` column
when the folder has one (a null entry falls back to the row's Alpaca columns), else the
Alpaca columns. ``data.template: auto`` picks chat for a ``messages`` column, else alpaca.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from platypus_ray.core.blocks import rows_only
from platypus_ray.core.conversation import ALPACA_COLUMNS, MESSAGES, Conversation, row_conversation
from platypus_ray.core.errors import UserError
from platypus_ray.core.paths import read_text
from platypus_ray.train.chat import check_template, tokenize_conversation
from platypus_ray.train.config import TrainConfig
from platypus_ray.train.packing import pack_batch
from platypus_ray.train.prompts import IGNORE_INDEX, tokenize_example

TOKENIZED_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("num_tokens", pa.int64()),
        ("truncated", pa.bool_()),  # cut at cutoff_len (a chat row may end before it: at a turn boundary)
    ]
)
TOKEN_COUNTS_SCHEMA = pa.schema([("rows", pa.int64()), ("tokens", pa.int64()), ("truncated", pa.int64())])
PACK_ROWS = 4096  # rows bin-packed together: larger packs fuller, smaller spreads the work wider


@dataclass
class TokenizedData:
    """Tokenised train/validation datasets plus the counts the plan needs."""

    train: ray.data.Dataset
    validation: ray.data.Dataset | None
    train_rows: int
    validation_rows: int
    train_tokens: int
    dropped_rows: int  # no response token left to learn from (the prompt fills cutoff_len; no assistant turn)
    train_sequences: int = 0  # what the workers step through: packed sequences, or train_rows unpacked
    truncated_rows: int = 0  # rows cut at cutoff_len (as without packing; never split across sequences)
    chat_template: str | None = None  # the Jinja text the rows were rendered with; None: the Alpaca template


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:  # LLaMA-2 ships none; Platypus padded with id 0 (<unk>)
        tokenizer.pad_token_id = 0
    return tokenizer


@rows_only(TOKENIZED_SCHEMA)
def tokenize_batch(
    batch: dict[str, np.ndarray],
    tokenizer_path: str,
    cutoff_len: int,
    train_on_inputs: bool,
    add_eos_token: bool,
    chat_template: str | None = None,
) -> pa.Table:
    """Ray Data batch function: canonical rows in, token ids and labels out (rows without a
    single label token are dropped here and counted by the caller). ``chat_template``: the Jinja
    text to render conversations with; None: the Alpaca template (Alpaca columns only)."""
    tokenizer = load_tokenizer(tokenizer_path)
    rows: list[dict[str, Any]]
    if chat_template is None:
        rows = [
            tokenize_example(tokenizer, ins, inp, out, cutoff_len, train_on_inputs, add_eos_token)
            for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"])
        ]
        for row in rows:
            row["truncated"] = len(row["input_ids"]) >= cutoff_len  # the Alpaca count, as before chat rows
    else:
        names = list(batch)
        conversations = [_conversation(dict(zip(names, values))) for values in zip(*(batch[n] for n in names))]
        rows = [tokenize_conversation(tokenizer, c, chat_template, cutoff_len, train_on_inputs) for c in conversations]
    rows = [row for row in rows if any(label != IGNORE_INDEX for label in row["labels"])]
    return pa.table(
        {
            "input_ids": [r["input_ids"] for r in rows],
            "labels": [r["labels"] for r in rows],
            "num_tokens": [len(r["input_ids"]) for r in rows],
            "truncated": [bool(r["truncated"]) for r in rows],
        },
        schema=TOKENIZED_SCHEMA,
    )


def _conversation(row: dict) -> Conversation:
    try:
        return row_conversation(row)
    except ValueError as exc:
        raise UserError(
            f"data.path: a conversation is malformed ({exc}); refine sets such rows aside as invalid"
        ) from exc


@rows_only(TOKEN_COUNTS_SCHEMA)
def _token_counts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One block's row count, token count and rows cut at ``cutoff_len``."""
    n = batch["num_tokens"]
    return {
        "rows": np.array([len(n)]),
        "tokens": np.array([int(n.sum())]),
        "truncated": np.array([int(batch["truncated"].sum())]),
    }


def prepare_data(cfg: TrainConfig) -> TokenizedData:
    """Read, split and tokenise; materialised so every worker shard and trial reads the same rows."""
    ds = ray.data.read_parquet(cfg.data.path)
    columns = set(ds.schema().names)
    chat_template = resolve_chat_template(cfg, MESSAGES in columns)
    wanted = [c for c in (MESSAGES, *ALPACA_COLUMNS) if c in columns] if chat_template else list(ALPACA_COLUMNS)
    ds = ds.select_columns(wanted)
    n_rows = ds.count()
    val_size = cfg.data.val_size if cfg.data.val_size < 1 else int(cfg.data.val_size)
    train: ray.data.Dataset
    validation: ray.data.Dataset | None
    if val_size and n_rows > 1:
        train, validation = ds.train_test_split(test_size=val_size, shuffle=cfg.data.shuffle, seed=cfg.training.seed)
    else:
        train, validation = (ds.random_shuffle(seed=cfg.training.seed) if cfg.data.shuffle else ds), None
    kwargs = {
        "tokenizer_path": cfg.model.name_or_path,
        "cutoff_len": cfg.data.cutoff_len,
        "train_on_inputs": cfg.data.train_on_inputs,
        "add_eos_token": cfg.data.add_eos_token,
        "chat_template": chat_template,
    }
    train = train.map_batches(tokenize_batch, fn_kwargs=kwargs, batch_format="numpy").materialize()
    # One pass over the materialised blocks (a per-block map, no shuffle): rows, tokens, truncated rows.
    blocks = train.map_batches(_token_counts, batch_size=None, batch_format="numpy").take_all()
    train_rows, train_tokens, truncated = (int(sum(b[k] for b in blocks)) for k in ("rows", "tokens", "truncated"))
    if cfg.data.packing == "packed" and train_rows:
        train = train.map_batches(
            pack_batch,
            fn_kwargs={"cutoff_len": cfg.data.cutoff_len, "seed": cfg.training.seed},
            batch_size=PACK_ROWS,
            batch_format="numpy",
        ).materialize()
    if validation is not None:
        validation = validation.map_batches(tokenize_batch, fn_kwargs=kwargs, batch_format="numpy").materialize()
    validation_rows = validation.count() if validation is not None else 0
    held_out = n_rows - train_rows - validation_rows
    return TokenizedData(
        train=train,
        validation=validation if validation_rows else None,
        train_rows=train_rows,
        validation_rows=validation_rows,
        train_tokens=train_tokens,
        dropped_rows=held_out,
        train_sequences=train.count() if cfg.data.packing == "packed" and train_rows else train_rows,
        truncated_rows=truncated,
        chat_template=chat_template,
    )


def resolve_chat_template(cfg: TrainConfig, has_messages: bool) -> str | None:
    """The Jinja text chat rows are rendered with, checked on a probe; None for the Alpaca template."""
    template = cfg.data.template
    if template == "alpaca" and has_messages:
        raise UserError(
            f"data.template is alpaca but {cfg.data.path} has a '{MESSAGES}' column (conversations): "
            "set data.template: chat (or auto)"
        )
    if template == "alpaca" or (template == "auto" and not has_messages):
        return None
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    if cfg.data.chat_template_file:
        text = read_text(cfg.data.chat_template_file)
        if text is None:
            raise UserError(f"data.chat_template: '{cfg.data.chat_template_file}' does not exist")
    elif cfg.data.chat_template:
        text = cfg.data.chat_template
    elif tokenizer.chat_template:
        text = tokenizer.get_chat_template()
    else:
        raise UserError(
            f"data.template is chat but the tokenizer of {cfg.model.name_or_path} has no chat template: "
            "set data.chat_template (Jinja text or a .jinja file), or data.template: alpaca for Alpaca rows"
        )
    check_template(tokenizer, text)
    return text
