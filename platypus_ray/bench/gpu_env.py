"""What every GPU-kit step shares: its settings, a local Ray instance, and a GPU memory sampler."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StepSettings:
    """Where a step reads its data and model and writes scratch files, and at what size it runs."""

    dry_run: bool
    data: str  # folder with alpaca_5000.json and mmlu/
    minilm: str | None  # the carried MiniLM folder (fp32 upcast of the fp16 storage); None: the bundled one
    work: str  # scratch folder of this run (models, Parquet, Ray Train storage)
    train_sizes: tuple[str, ...] = ("1b", "8b")
    train_steps: int = 30

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


@contextlib.contextmanager
def local_ray(gpus: int):
    """The Ray instance already connected (the tests' session), else a local one on 127.0.0.1 with
    its own temp folder, no dashboard (its web client is not carried), shut down on exit."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    from platypus_ray.core.runtime import WORKER_ENV, interpreter_first_path

    temp = tempfile.mkdtemp(prefix="ray-gpu-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**WORKER_ENV, "PATH": interpreter_first_path(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    passed = ("HF_HUB_OFFLINE", "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR")
    env.update({k: os.environ[k] for k in passed if k in os.environ})
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        _temp_dir=temp,
        include_dashboard=False,
        num_gpus=gpus,
        runtime_env={"env_vars": env},
        logging_level=logging.WARNING,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


class PeakGpuMemory:
    """Peak memory used on GPU 0 as ``nvidia-smi`` reports it (every process on the device),
    sampled every ``every_s`` while the block runs; ``peak_gib`` is None without nvidia-smi."""

    def __init__(self, every_s: float = 0.5):
        self.every_s = every_s
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.peak_mib = max(self.peak_mib or 0.0, float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakGpuMemory:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def peak_gib(self) -> float | None:
        return None if self.peak_mib is None else round(self.peak_mib / 1024, 2)


def record_partial(work: str, step: str, item: dict) -> None:
    """Keep one finished part of a step (a train run) where the kit finds it if the step runs out of time."""
    import json

    with open(Path(work) / f"{step}.partial.jsonl", "a") as handle:
        handle.write(json.dumps(item) + "\n")


def read_partial(work: str, step: str) -> list[dict]:
    import json

    path = Path(work) / f"{step}.partial.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def shared_tokenizer(work: str) -> str:
    """A folder holding the tokenizer every kit model uses (trained once per run: the tiny model's
    byte-level BPE; random-weight models need no particular vocabulary)."""
    folder = Path(work) / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        from platypus_ray.devtools.tiny_model import train_tokenizer

        train_tokenizer().save_pretrained(folder)
    return str(folder)


def alpaca_rows(data: str, limit: int | None = None) -> list[dict]:
    """The carried Alpaca rows in the refine stage's kept/ columns."""
    import json

    records = json.loads((Path(data) / "alpaca_5000.json").read_text())[:limit]
    return [{k: r.get(k) or "" for k in ("instruction", "input", "output")} for r in records]
