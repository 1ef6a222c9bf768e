"""The trained LoRA adapter: exported from the last Ray checkpoint and checked for real weights.

Under ZeRO-3 every parameter is partitioned, so an adapter saved without gathering holds
zero-size tensors; loading it then fails with a size mismatch, or worse, silently leaves
the base model unchanged. :func:`check_adapter` makes that failure loud.
"""

from __future__ import annotations

import os
import shutil

import ray.train

from platypus_ray.core.paths import is_remote
from platypus_ray.train.layout import CHECKPOINT_SUBDIR

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",  # transformers 5 saves the chat template beside tokenizer_config.json
)


def export_adapter(checkpoint: ray.train.Checkpoint, destination: str) -> str:
    """Copy adapter + tokenizer files out of a Ray checkpoint to ``destination`` (local or URI)."""
    with checkpoint.as_directory() as folder:
        source = os.path.join(folder, CHECKPOINT_SUBDIR)
        names = [n for n in (*ADAPTER_FILES, *TOKENIZER_FILES) if os.path.isfile(os.path.join(source, n))]
        missing = [n for n in ADAPTER_FILES if n not in names]
        if missing:
            raise RuntimeError(f"checkpoint {checkpoint.path} has no {missing}; found {sorted(os.listdir(source))}")
        if is_remote(destination):
            import pyarrow.fs as pafs

            fs, root = pafs.FileSystem.from_uri(destination)
            fs.create_dir(root)
            for name in names:
                pafs.copy_files(os.path.join(source, name), f"{root}/{name}", destination_filesystem=fs)
        else:
            os.makedirs(destination, exist_ok=True)
            for name in names:
                shutil.copy2(os.path.join(source, name), os.path.join(destination, name))
    return destination


def check_adapter(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a saved adapter; raise if any LoRA tensor is empty or all lora_B are zero."""
    from safetensors import safe_open

    if is_remote(path):
        return {}  # checked on the worker side before upload; reading back from object storage is skipped
    shapes: dict[str, tuple[int, ...]] = {}
    any_nonzero_b = False
    with safe_open(os.path.join(path, "adapter_model.safetensors"), framework="pt") as tensors:
        for name in tensors.keys():  # noqa: SIM118 - safetensors' safe_open is not iterable
            tensor = tensors.get_tensor(name)
            shapes[name] = tuple(tensor.shape)
            if tensor.numel() == 0:
                raise RuntimeError(
                    f"adapter {path} is empty ({name} has shape {tuple(tensor.shape)}): ZeRO-3 partitions were "
                    "saved without gathering them"
                )
            if "lora_B" in name and bool(tensor.abs().sum() > 0):
                any_nonzero_b = True
    if not shapes or not any_nonzero_b:
        raise RuntimeError(f"adapter {path} has no trained lora_B weights (all zero: no update was saved)")
    return shapes
