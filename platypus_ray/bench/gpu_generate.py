"""vLLM against transformers on a GPU: the sample generation task through both evaluate engines.

    python -m platypus_ray.bench.gpu_generate                  # a GPU node with vllm installed
    python -m platypus_ray.bench.gpu_generate --model out/merged --dtype float32 --out out/gpu-generate
    python -m platypus_ray.bench.gpu_generate --dry-run        # this CPU: the transformers side only

Runs ``platypus_ray/samples/tasks/sample_sums.yaml`` (12 word problems, greedy ``generate_until``,
gsm8k's stop strings and regex filters) through the evaluate stage twice on the same model,
``inference.engine: transformers`` and ``inference.engine: vllm`` (``device: cuda``), and compares
each document's generated string. Prints one JSON line: how many strings are equal, the first
differing pairs, and each engine's exact_match. Greedy decoding can differ between vLLM's kernels
and HF ``generate`` where two tokens (nearly) tie, more so in bf16 and on an untrained model: a
difference is reported, not hidden. Exit 0 when both engines ran (differences or not), 1 when one
failed, 2 when this machine cannot run the check.

Not part of the GPU kit (``bench/gpu.py``): vllm is far larger than what the kit carries, and the
kit's machine has neither vllm nor lm-eval. The default model is the tiny LLaMA, built here at a
width vLLM's attention kernels take (head size 64); ``--model`` gives a real one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TASK = "sample_sums"
TASKS = REPO / "platypus_ray" / "samples" / "tasks"  # its data paths are relative to the repository root


def compare(reference: dict[int, str], other: dict[int, str], shown: int = 3) -> dict:
    """Equal strings per document of ``reference`` (``doc_id -> text``), and the first ``shown`` that differ."""
    differing = [d for d in sorted(reference) if other.get(d) != reference[d]]
    return {
        "documents": len(reference),
        "equal": len(reference) - len(differing),
        "differing": [{"doc_id": d, "transformers": reference[d], "vllm": other.get(d)} for d in differing[:shown]],
    }


def responses(out: Path) -> tuple[dict[int, str], dict[str, float]]:
    """An evaluate output's generated string per document, and its task's exact_match per filter."""
    import pandas as pd

    items = pd.read_parquet(out / "items.parquet")
    texts = {int(r.doc_id): str(r.response) for r in items.itertuples()}  # one row per filter, same response
    metrics = json.loads((out / "summary.json").read_text())["models"]
    scores = next(iter(metrics.values()))["benchmarks"][TASK]
    return texts, {k: v for k, v in scores.items() if k.startswith("exact_match") and "stderr" not in k}


def evaluate_with(engine: str, model: str, dtype: str, device: str, out: Path, limit: int | None) -> Path:
    """The evaluate stage on the sample task with ``engine`` generating; its output folder."""
    from platypus_ray.core.config import validate_config
    from platypus_ray.evaluate import EvaluateConfig, run

    cfg = {
        "model": {"name_or_path": model, "dtype": dtype},
        "benchmarks": [{"task": TASK, "include_path": str(TASKS)}],
        "inference": {"device": device, "engine": engine, "batch_size": 8},
        "output": str(out / engine),
        "limit": limit,
    }
    return run(validate_config(EvaluateConfig, cfg)).output


def default_model(work: Path, dry_run: bool) -> str:
    """The tiny LLaMA: head size 64 on a GPU (vLLM's kernels take it), the tests' shape on a dry run."""
    from platypus_ray.devtools.tiny_model import TinyModelConfig, run

    shape = {} if dry_run else {"hidden_size": 256, "intermediate_size": 704, "heads": 4, "kv_heads": 2}
    return str(run(TinyModelConfig(out=str(work / "tiny-llama"), pretrain_steps=200, **shape)).out)


def check(args: argparse.Namespace) -> dict:
    """Both engines (the transformers one alone on a dry run), compared."""
    from platypus_ray.evaluate.engines import vllm_installed

    out = Path(args.out).resolve()
    model = str(Path(args.model).resolve()) if args.model and Path(args.model).exists() else args.model
    with _working_dir(REPO):  # the task YAML's data_files are relative to the repository root
        model = model or default_model(Path(tempfile.mkdtemp(prefix="platypus-gpu-generate-")), args.dry_run)
        device = "cpu" if args.dry_run else "cuda"
        line: dict = {"check": "vllm-generation", "model": model, "dtype": args.dtype, "device": device}
        started = time.perf_counter()
        reference, line["transformers"] = responses(
            evaluate_with("transformers", model, args.dtype, device, out, args.limit)
        )
        line["transformers_s"] = round(time.perf_counter() - started, 1)
        if args.dry_run and not vllm_installed():
            return line | {"vllm": "not run: a dry run without vllm installed"}
        started = time.perf_counter()
        texts, line["vllm"] = responses(evaluate_with("vllm", model, args.dtype, device, out, args.limit))
    return line | {"vllm_s": round(time.perf_counter() - started, 1), **compare(reference, texts)}


@contextlib.contextmanager
def _working_dir(folder: Path) -> Iterator[None]:
    """``contextlib.chdir`` of Python 3.11, for 3.10."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m platypus_ray.bench.gpu_generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="a model folder or hub id; default: the tiny LLaMA, built here")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"], help="auto: bf16 on GPU"
    )
    parser.add_argument("--limit", type=int, help="the first N documents only")
    parser.add_argument("--out", default=os.environ.get("OUT") or "out/gpu-generate", help="the two evaluate outputs")
    parser.add_argument("--dry-run", action="store_true", help="on this CPU, the transformers engine only")
    args = parser.parse_args(argv)
    if not args.dry_run:
        problem = _cannot_run()
        if problem:
            print(f"gpu_generate: error: {problem}", file=sys.stderr)
            return 2
    try:
        line = check(args)
    except Exception as exc:  # noqa: BLE001 - an engine's failure is the check's result line
        line = {"check": "vllm-generation", "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(line), flush=True)
    return 1 if line.get("status") == "error" else 0


def _cannot_run() -> str | None:
    import torch

    from platypus_ray.evaluate.engines import vllm_installed

    if not torch.cuda.is_available():
        return f"no CUDA device visible (torch {torch.__version__}); run it on a GPU node, or pass --dry-run"
    if not vllm_installed():
        return "vllm is not installed here; pip install vllm on the GPU node, or pass --dry-run"
    return None


if __name__ == "__main__":
    sys.exit(main())
