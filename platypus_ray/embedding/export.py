"""Exported embedding models, built once from the local sentence-transformers weights (offline).

Kinds: ``onnx`` (fp32 graph with pooling and normalisation inside; ONNX Runtime and OpenVINO
both run it), ``onnx-int8`` (the same graph, weights dynamically quantised to int8) and
``static`` (a model2vec static model distilled from the transformer). Each lives in
``<export root>/<model>-<key>/<kind>/``, where the key changes whenever the source weights do.

A folder is complete only when its ``export.json`` exists and the model file's sha256 matches
the one recorded there. Exports are written to a temporary folder and renamed into place, so a
killed export never leaves a folder under the final name, and a later corruption (a truncated
copy, a half-synced shared disk) stops the run with the folder to delete instead of computing
wrong vectors.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
import warnings
from pathlib import Path

from platypus_ray.embedding.manifest import RECIPES, verify_export, write_manifest
from platypus_ray.embedding.models import resolve_model

_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export_root(export_dir: str | None) -> Path:
    """``embedding.export_dir``, else ``$PLATYPUS_RAY_CACHE/embedders``, else ``~/.cache/platypus-ray/embedders``."""
    if export_dir:
        return Path(export_dir).expanduser()
    base = os.environ.get("PLATYPUS_RAY_CACHE") or "~/.cache/platypus-ray"
    return Path(base).expanduser() / "embedders"


def model_folder(root: Path, model: str) -> Path:
    """``root/<name>-<key>``: the key hashes the resolved weights' file names, sizes and config."""
    source = Path(resolve_model(model))
    digest = hashlib.sha256(str(source).encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(source)}:{path.stat().st_size}".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return root / f"{source.name if source.name != 'model' else source.parent.name}-{digest.hexdigest()[:12]}"


def ensure_export(model: str, kind: str, root: Path) -> Path:
    """The complete export folder of ``kind`` for ``model``, building it when absent."""
    folder = model_folder(root, model) / kind_folder(kind)
    if folder.exists():
        verify_export(folder)
        return folder
    staging = folder.parent / f".{kind}-{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    try:
        if kind == "static":
            from platypus_ray.embedding.distill import distill_static

            info: dict = {"dim": int(distill_static(model, staging).dim)}
        else:
            info = _export_onnx(model, staging, quantize=kind == "onnx-int8")
        write_manifest(staging, kind, model, info)
        try:
            staging.rename(folder)
        except OSError:  # another actor or run finished the same export first
            if not folder.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    verify_export(folder)
    return folder


def kind_folder(kind: str) -> str:
    """``onnx-int8-v2``; a first recipe keeps the plain kind name (folders made before versioning)."""
    return kind if RECIPES[kind] == 1 else f"{kind}-v{RECIPES[kind]}"


def _export_onnx(model: str, folder: Path, quantize: bool) -> dict:
    """Trace the whole sentence-transformers pipeline (transformer, pooling, normalise) to ONNX;
    the tokenizer is saved beside it so actors need neither torch nor transformers to run it."""
    import torch
    from sentence_transformers import SentenceTransformer

    # Eager attention traces to plain MatMul/Softmax, which ONNX Runtime and OpenVINO optimise
    # better than the traced SDPA graph (measured ~1.06x); the vectors are the same.
    st = SentenceTransformer(resolve_model(model), device="cpu", model_kwargs={"attn_implementation": "eager"}).eval()
    names = [n for n in _INPUTS if n in st.tokenizer.model_input_names]
    features = st.preprocess(["an example sentence to trace", "a second, longer example sentence to trace"])

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, *tensors):
            return self.st(dict(zip(names, tensors)))["sentence_embedding"]

    target = folder / ("fp32.onnx" if quantize else "model.onnx")
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"sentence_embedding": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that hold for every input here
        torch.onnx.export(
            Pipeline().eval(),
            tuple(features[n] for n in names),
            str(target),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    st.tokenizer.save_pretrained(str(folder))
    if quantize:
        # Per-channel int8 MatMul weights only (the default also quantises the embedding Gather:
        # twice the cosine error), the feed-forward output projections left in fp32 (RECIPES).
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(target), load_external_data=False).graph
        ffn_out = [
            n.name
            for n in graph.node
            if n.op_type == "MatMul" and "/output/dense/" in n.name and "/attention/" not in n.name
        ]
        quantize_dynamic(
            str(target),
            str(folder / "model.onnx"),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=ffn_out,
        )
        target.unlink()
    if st.max_seq_length is None:  # a model whose first module sets no length: its tokenizer would not truncate
        raise ValueError(f"{model}: sentence-transformers reports no max_seq_length for it; cannot export it")
    return {
        "inputs": names,
        "max_seq_length": int(st.max_seq_length),
        "dim": len(st.encode(["x"], convert_to_numpy=True)[0]),
    }
