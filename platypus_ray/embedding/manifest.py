"""The manifest of an exported embedding model (``export.json``): kind, recipe, file and its sha256.

A folder is a complete export only when its manifest exists and the model file's checksum
matches the one recorded there (:func:`verify_export`). Exports (``export.py``) and
distilled static models (``distill.py``) both write it.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from platypus_ray.core.checksum import sha256
from platypus_ray.core.errors import UserError

KINDS = ("onnx", "onnx-int8", "static")
# Bumped when a kind's recipe changes its vectors: the export gets a new folder (an old one is
# never reused) and the embedding cache a new namespace. int8 v2 keeps the feed-forward output
# projections in fp32: their inputs (after GELU) carry the outliers int8 clips; on Alpaca that
# halved the rows whose keep/drop moved (36 -> 20 of 5,000).
RECIPES = {"onnx": 1, "onnx-int8": 2, "static": 1}
MANIFEST = "export.json"
_FILES = {"onnx": "model.onnx", "onnx-int8": "model.onnx", "static": "model.safetensors"}


def verify_export(folder: Path) -> dict:
    """The manifest of a complete export; a UserError naming the folder when it is partial or corrupt."""
    manifest = folder / MANIFEST
    fix = f"delete {folder} and run again to re-export it"
    if not manifest.is_file():
        raise UserError(f"embedding.export_dir: {folder} is a partial export (no {MANIFEST}); {fix}")
    try:
        info = json.loads(manifest.read_text())
        model_file = folder / info["file"]
    except (ValueError, KeyError) as exc:
        raise UserError(f"embedding.export_dir: {manifest} is unreadable ({exc}); {fix}") from None
    if not model_file.is_file():
        raise UserError(f"embedding.export_dir: {model_file} is missing from the export; {fix}")
    if sha256(model_file) != info.get("sha256"):
        raise UserError(
            f"embedding.export_dir: {model_file} does not match the checksum in {MANIFEST} "
            f"(truncated or changed after export); {fix}"
        )
    return info


def write_manifest(folder: Path, kind: str, model: str, info: dict) -> None:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "sentence-transformers", "onnx", "onnxruntime", "model2vec"):
        with contextlib.suppress(PackageNotFoundError):  # a missing optional package is not recorded
            versions[package] = version(package)
    file = _FILES[kind]
    manifest = {
        "kind": kind,
        "recipe": RECIPES[kind],
        "model": model,
        "file": file,
        "sha256": sha256(folder / file),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions,
        **info,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
