"""GPU check kit: proves the project's GPU paths on one GPU, one JSON line per step.

    scripts/gpu-bundle                                   # here (PyPI): .gpu/, sizes printed
    python3 -m platypus_ray.bench.gpu --bundle .gpu      # there: installs .gpu/ into a temp prefix, runs
    python3 -m platypus_ray.bench.gpu --only train       # a rerun of what failed (or --skip embed,tiles)
    python -m platypus_ray.bench.gpu --dry-run           # the same steps on this CPU, tiny sizes

Steps (bounded each; details in bench/gpu_embed.py and bench/gpu_train.py):
embed (refine's Ray Data embed stage on CUDA, fp32/fp16/bf16 vs bare encode, decisions vs fp32),
tiles (exact dedup of 1M vectors on GPU tiles, float64 CPU check on a sample), train (Ray Train +
ZeRO-3 + LoRA bf16 at ~1B and ~8B, packed and not: tokens/s, peak memory, MFU, adapter), attention
(packed per-row loss = unpacked within 1e-3 per attention implementation). Each step runs in its
own process under a time limit; the lines also go to ``--out``/gpu-steps.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from platypus_ray.bench.gpu_env import StepSettings, read_partial

# step -> (module, function, seconds allowed on the GPU machine); they sum to 9 min with the install
STEPS = {
    "embed": ("platypus_ray.bench.gpu_embed", "embed_step", 90),
    "tiles": ("platypus_ray.bench.gpu_embed", "tiles_step", 80),
    "train": ("platypus_ray.bench.gpu_train", "train_step", 300),
    "attention": ("platypus_ray.bench.gpu_train", "attention_step", 40),
}
DRY_RUN_LIMIT_S = 600  # a shared 2-core CI box runs the tiny steps far slower than an idle one
MARK = "GPU-STEP "  # a child's result line, told apart from what the step itself prints
REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


class KitError(Exception):
    """Bad input or environment: printed as one ``platypus-ray gpu: error:`` line, exit 2."""


def verify(bundle: Path) -> dict:
    """The manifest, after every piece's size and sha256 matched it."""
    from platypus_ray.core.checksum import sha256

    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise KitError(
            f"{manifest_path} not found; build it with scripts/gpu-bundle on a machine with PyPI and "
            f"copy the whole '{bundle.name}' folder into the checkout on the GPU machine (docs/guides/gpu.md)"
        )
    manifest = json.loads(manifest_path.read_text())
    for piece in manifest["pieces"]:
        path = bundle / piece["path"]
        if not path.is_file() or path.stat().st_size != piece["bytes"] or sha256(path) != piece["sha256"]:
            raise KitError(
                f"{path}: missing or not the file the manifest names (size/sha256); rebuild with "
                "scripts/gpu-bundle and copy the whole folder again"
            )
    return manifest


def install(bundle: Path, prefix: Path) -> tuple[str, str]:
    """Wheels and ray into ``prefix`` (a --target install: nothing of the machine's changes); the
    MiniLM unpacked beside it. Returns (PYTHONPATH entry, MiniLM folder)."""
    import tarfile

    site = prefix / "site"
    wheels = sorted(str(p) for p in (bundle / "base" / "wheels").glob("*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--target",
            str(site),
            *wheels,
        ],
        check=True,
        timeout=120,
    )
    with tarfile.open(bundle / "base" / "ray.tar.xz") as tar:
        tar.extractall(site, filter="fully_trusted")  # keeps the binaries' exec bits
    minilm = ""
    if (bundle / "minilm" / "model.tar.xz").is_file():
        from platypus_ray.bench.gpu_minilm import unpack  # numpy, torch, safetensors: the machine's own

        minilm = str(unpack(bundle / "minilm" / "model.tar.xz", prefix))
    return str(site), minilm


def run_step(name: str, settings: StepSettings, in_process: bool, limit_s: float, env: dict) -> dict:
    """One step's JSON line: its numbers, or why it failed or ran out of time."""
    started = time.perf_counter()
    if in_process:
        line = call_step(name, settings)
    else:
        command = [
            sys.executable,
            "-m",
            "platypus_ray.bench.gpu",
            "--step",
            name,
            "--settings",
            json.dumps(asdict(settings)),
        ]
        # its own process group: on timeout the step and the Ray instance it started go together
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, _ = child.communicate(timeout=limit_s)
            results = [json.loads(x[len(MARK) :]) for x in stdout.splitlines() if x.startswith(MARK)]
            sys.stdout.write("".join(x + "\n" for x in stdout.splitlines() if not x.startswith(MARK)))
            line = results[-1] if results else {"step": name, "status": "error", "error": f"exit {child.returncode}"}
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.communicate(timeout=30)  # a grandchild still holding the pipe must not hang the kit
            line = {
                "step": name,
                "status": "timeout",
                "error": f"over its {limit_s:.0f} s limit",
                "finished_parts": read_partial(settings.work, name),
            }
    return line | {"step_s": round(time.perf_counter() - started, 1)}


def call_step(name: str, settings: StepSettings) -> dict:
    """Run one step here: its numbers, or the error that stopped it (the other steps still run)."""
    import importlib

    module, function, _ = STEPS[name]
    try:
        return {"step": name, "status": "ok", **getattr(importlib.import_module(module), function)(settings)}
    except Exception as exc:  # noqa: BLE001 - a step's failure is its line
        return {"step": name, "status": "error", "error": f"{type(exc).__name__}: {exc}"}


def _step_child(name: str, settings_json: str) -> int:
    """``--step``: run one step in this process and print its line with a marker for the parent."""
    fields = json.loads(settings_json)
    line = call_step(name, StepSettings(**{**fields, "train_sizes": tuple(fields["train_sizes"])}))
    print(MARK + json.dumps(line), flush=True)
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="platypus-ray gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="the same steps on this CPU at tiny sizes, no bundle")
    parser.add_argument("--bundle", default=".gpu", help="the folder scripts/gpu-bundle built (carried there)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to leave out ({', '.join(STEPS)})")
    parser.add_argument("--only", default="", help="comma-separated steps to run, nothing else")
    parser.add_argument("--sizes", default="1b,8b", help="train: model sizes (1b, 8b)")
    parser.add_argument("--steps", type=int, default=30, help="train: optimizer steps per run")
    parser.add_argument("--out", default=os.environ.get("OUT") or "out/gpu", help="where gpu-steps.jsonl goes")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the steps in this process (the tests: reuses a connected Ray); no time limits",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def chosen_steps(args: argparse.Namespace) -> list[str]:
    named = {key: [s for s in getattr(args, key).split(",") if s] for key in ("skip", "only")}
    unknown = sorted({s for names in named.values() for s in names} - set(STEPS))
    if unknown:
        raise KitError(f"--skip/--only: unknown step(s) {unknown}; the steps are {', '.join(STEPS)}")
    return [s for s in STEPS if (not named["only"] or s in named["only"]) and s not in named["skip"]]


def prepare_run(args: argparse.Namespace, work: str) -> tuple[StepSettings, dict]:
    """Settings and environment of the steps: the venv and shared data on a dry run, else the
    installed bundle (after its checksums) on a machine that must see a GPU."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    sizes = tuple(s for s in args.sizes.split(",") if s)
    if args.dry_run:
        return StepSettings(True, str(SHARED_DATA), None, work, sizes, 2), env
    import torch

    if not torch.cuda.is_available():
        raise KitError(
            f"no CUDA device visible (torch {torch.__version__}); run this on the GPU machine, or pass "
            "--dry-run for the CPU rehearsal"
        )
    bad = sorted(set(sizes) - {"1b", "8b"})
    if bad:
        raise KitError(f"--sizes: unknown {bad}; give 1b, 8b or both")
    bundle = Path(args.bundle)
    manifest = verify(bundle)
    site, minilm = install(bundle, Path(work))
    print(f"gpu: installed {len(manifest['pieces'])} pieces into {site}", flush=True)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), site, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(work) / "torch_extensions"))
    return StepSettings(False, str(bundle / "base" / "data"), minilm or None, work, sizes, args.steps), env


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.step:
        return _step_child(args.step, args.settings)
    try:
        steps = chosen_steps(args)
        work = tempfile.mkdtemp(prefix="platypus-gpu-")
        settings, env = prepare_run(args, work)
    except (KitError, subprocess.SubprocessError) as exc:
        print(f"platypus-ray gpu: error: {exc}", file=sys.stderr)
        return 2
    if args.in_process:
        os.environ.update({k: v for k, v in env.items() if k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in steps:
        limit = DRY_RUN_LIMIT_S if args.dry_run else STEPS[name][2]
        line = run_step(name, settings, args.in_process, limit, env)
        print(json.dumps(line), flush=True)
        lines.append(line)
    (out / "gpu-steps.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return 0 if all(x["status"] == "ok" for x in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
