"""Builders shared by tests: train and sweep configs, a tiny sentence-transformers model."""

from __future__ import annotations


def train_raw(model: str, data: str, storage: str, name: str, **sections) -> dict:
    """A raw 2-worker CPU ZeRO-3 config for the tiny model; ``sections`` override per section."""
    raw = {
        "model": {"name_or_path": model},
        "data": {"path": data, "val_size": 0.1, "cutoff_len": 128},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "mlp"},
        "training": {
            "learning_rate": 5e-3,
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "max_steps": 12,
            "warmup_steps": 2,
            "eval_every": 6,
            "logging_steps": 1,
        },
        "cluster": {"workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}},
        "run": {"name": name, "storage_path": storage, "max_failures": 0},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def train_config(model: str, data: str, storage: str, name: str, **sections):
    from platypus_ray.core.config import validate_config
    from platypus_ray.train.config import TrainConfig

    return validate_config(TrainConfig, train_raw(model, data, storage, name, **sections))


def shipped_presets() -> dict[str, object]:
    """Every YAML under jobs/configs, validated (no Ray, no disk: schemas are pure) by the command
    its header's job runs.

    Each preset's header shows ``python jobs/<job>.py --config ...``; the job script names its
    command (``main(["train", ...])``), and the command its config class.
    """
    import re
    from pathlib import Path

    from platypus_ray.cli import COMMANDS
    from platypus_ray.core.config import load_config

    root = Path(__file__).parents[1]
    presets = {}
    for path in sorted((root / "jobs/configs").glob("*.yaml")):
        job = re.search(r"python (jobs/\w+\.py) --config", path.read_text())
        assert job, f"{path.name}: the header must show the `ray job submit ... python jobs/<job>.py` line"
        command = COMMANDS[re.search(r'main\(\["([\w-]+)"', (root / job.group(1)).read_text()).group(1)]
        presets[path.name] = load_config(command.config_class(), path)
    return presets


def build_static_embedder(folder, texts: list[str], dim: int = 64, translations: dict[str, str] | None = None) -> str:
    """A tiny sentence-transformers model saved at ``folder``: a WordPiece vocabulary trained on
    ``texts`` (Chinese characters split one per token) and random token vectors, mean-pooled and
    normalised. It reads any script it saw, like a multilingual model, and loads by path offline.

    ``translations`` maps a sentence to its translation; each token of the translation (that the
    sentence does not also use) gets the sentence's mean token vector, so the pair embeds to
    (nearly) one vector, as a multilingual model places a sentence and its translation. Those
    tokens move towards the sentence in every other text that uses them too: keep pairs few."""
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    translations = translations or {}
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        [*texts, *translations.values()], trainers.WordPieceTrainer(vocab_size=2000, special_tokens=["[UNK]", "[PAD]"])
    )
    weights = np.random.default_rng(0).standard_normal((tokenizer.get_vocab_size(), dim)).astype(np.float32)
    for sentence, translation in translations.items():
        own = tokenizer.encode(sentence).ids
        tied = sorted(set(tokenizer.encode(translation).ids) - set(own))
        weights[tied] = weights[own].mean(axis=0)
    model = SentenceTransformer(
        modules=[st_models.StaticEmbedding(tokenizer, embedding_weights=weights), st_models.Normalize()]
    )
    model.save(str(folder))
    return str(folder)


def dense_family_vectors(rows: int, copies: int, seed: int, backend: str):
    """Real vectors of a dense near-duplicate family: the first ``rows`` shipped instructions, each
    followed by ``copies`` chained perturbations (a word dropped, swapped or added, or the case
    changed, as the scale bench builds them), distinct texts only, embedded with ``backend``."""
    import random

    import numpy as np

    from platypus_ray.bench.refine_e2e import perturb
    from platypus_ray.embedding.encoders import EncoderSpec, load_encoder
    from platypus_ray.samples import sample_rows

    rng = random.Random(seed)
    texts = []
    for row in sample_rows()[:rows]:
        text = row["instruction"]
        texts.append(text)
        for _ in range(copies):
            text = perturb(text, rng)
            texts.append(text)
    texts = list(dict.fromkeys(texts))
    encoder = load_encoder(EncoderSpec("all-MiniLM-L6-v2", backend, device="cpu", batch_size=64))
    return encoder.encode(texts).astype(np.float32)


def sample_conversations(n: int = 40, max_pairs: int = 3) -> list[list[dict[str, str]]]:
    """OpenAI-style conversations made of the shipped sample rows: 1 to ``max_pairs`` user/assistant
    pairs each (consecutive rows), every third with a system prompt."""
    from platypus_ray.samples import sample_rows

    rows, out, at = sample_rows(), [], 0
    for k in range(n):
        pairs = 1 + k % max_pairs
        messages = [{"role": "system", "content": "You answer briefly."}] if k % 3 == 0 else []
        for r in (rows[(at + j) % len(rows)] for j in range(pairs)):
            user = f"{r['instruction']} {r['input']}" if r["input"] else r["instruction"]
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        at += pairs
        out.append(messages)
    return out


def write_chat_kept(folder, conversations: list[list[dict[str, str]]]) -> str:
    """A kept/ folder holding ``conversations`` in the ``messages`` column (list of role/content structs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from platypus_ray.core.conversation import MESSAGES, MESSAGES_TYPE

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"id": [str(i) for i in range(len(conversations))], MESSAGES: pa.array(conversations, type=MESSAGES_TYPE)}
    )
    pq.write_table(table, folder / "part-0.parquet")
    return str(folder)
