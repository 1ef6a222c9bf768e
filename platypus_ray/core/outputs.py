"""Output folders: guarded before anything runs, and replaced whole when a stage rewrites them.

A stage may only replace (or write into) a folder it can prove it owns: one that does not
exist yet, or one that carries this project's marker file from an earlier run. Everything
else (the working directory, home, a filesystem root, a folder holding the inputs) is
refused before Ray starts, with the key to change.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from platypus_ray.core.errors import UserError
from platypus_ray.core.paths import is_remote

logger = logging.getLogger(__name__)

MARKER = ".platypus-ray-output"
_LEFTOVER_KINDS = ("staging", "old")


def check_output(output: str, key: str, inputs: Iterable[str] = (), source_folders: Iterable[str] = ()) -> None:
    """Refuse an output folder whose replacement could destroy data this project did not write.

    ``key`` is the config key named in the message (``output``, ``run.storage_path``);
    ``inputs`` are paths the stage reads (the output may not equal or contain them);
    ``source_folders`` are folders (read recursively) or globs: the output may not sit where
    they would read its files back as input on the next run (:func:`read_back`).
    """
    if is_remote(output):
        return  # object stores: written key by key, never replaced whole (see replaced_atomically)
    fix = f"set {key} to a new folder (--set {key}=out/NAME)"
    if not output.strip():
        raise UserError(f"{key} is empty; {fix}")
    target = _resolved(output)
    if target == Path(target.anchor) or target == _resolved("~") or target == _resolved("."):
        raise UserError(f"{key}: '{output}' is {_what(target)}; refusing to replace it; {fix}")
    if _is_within(Path.cwd().resolve(), target):
        raise UserError(f"{key}: '{output}' holds the working directory; refusing to replace it; {fix}")
    for path in inputs:
        if not is_remote(path) and _is_within(_resolved(_glob_root(path)), target):
            raise UserError(f"{key}: '{output}' holds the input '{path}'; replacing it would delete the input; {fix}")
    for folder in source_folders:
        if read_back(output, folder):
            what = (
                f"the source folder '{folder}'"
                if _literal(folder)
                else f"the folder of the source glob '{folder}' (its files would match)"
            )
            raise UserError(f"{key}: '{output}' is inside {what}, so the next run would read it back as input; {fix}")
    if target.is_file():
        raise UserError(f"{key}: '{output}' is a file, not a folder; {fix}")
    _check_writable(output, target, key, fix)
    if target.is_dir() and any(target.iterdir()) and not (target / MARKER).is_file():
        raise UserError(
            f"{key}: '{output}' exists, is not empty and was not written by platypus-ray (no {MARKER} "
            f"file in it); {fix}, or move its contents away first"
        )


def _check_writable(output: str, target: Path, key: str, fix: str) -> None:
    """The output (or the nearest folder that exists above it) must be writable: a read-only
    mount or a folder without permission fails here, before any work, not at the last step."""
    existing = next(folder for folder in (target, *target.parents) if folder.exists())
    if os.access(existing, os.W_OK | os.X_OK):
        return
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    why = "is on a read-only filesystem" if read_only else "is not writable by this user"
    raise UserError(f"{key}: cannot write '{output}': '{existing}' {why}; {fix}")


def mark_output(folder: str | Path, stage: str) -> None:
    """Write the marker that lets a later run of this project replace ``folder``."""
    marker = Path(folder) / MARKER
    marker.write_text(json.dumps({"stage": stage, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


@contextmanager
def replaced_atomically(output: str, stage: str) -> Iterator[Path]:
    """Yield a staging folder beside ``output``; on success it takes ``output``'s place.

    The swap is two renames on the same filesystem (old aside, new in), so a reader sees
    either the complete old output or the complete new one. On failure the staging folder
    is removed and the old output stays untouched. Staging folders left by a killed run
    are removed first (only ours: they carry the marker from their first moment).
    """
    if is_remote(output):
        raise UserError(
            f"output: '{output}' is remote; {stage} writes a local or shared-filesystem folder "
            "(mount the bucket, or copy the folder afterwards)"
        )
    check_output(output, "output")
    target = _resolved(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    mark_output(staging, stage)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def remove_leftovers(target: Path) -> None:
    """Remove ``.NAME.staging-*`` / ``.NAME.old-*`` folders of killed runs that carry our marker."""
    if not target.parent.is_dir():
        return
    for kind in _LEFTOVER_KINDS:
        for leftover in target.parent.glob(f".{target.name}.{kind}-*"):
            if leftover.is_dir() and (leftover / MARKER).is_file():
                logger.warning("removing %s (left by an interrupted run)", leftover)
                shutil.rmtree(leftover, ignore_errors=True)


def read_back(path: str, source: str) -> bool:
    """Whether files written under the local folder ``path`` would be read by ``source`` (a file,
    a folder read recursively, or a glob) on the next run.

    A glob without ``**`` matches files at one depth only (a matched folder is not expanded),
    so ``*.jsonl`` never reads ``out/refine/...`` and ``data/*.jsonl`` never reads
    ``data/refined/...``; ``data/*/*.json`` does read ``data/refined/stats.json``. Refused when
    some file under ``path`` could match: the glob is deeper than ``path`` and its leading parts
    match ``path``'s (the file names we write are assumed to match the rest)."""
    if is_remote(path) or is_remote(source):
        return False
    if _literal(source):
        return os.path.isdir(_local(source)) and _is_within(_resolved(path), _resolved(source))
    root = _glob_root(_local(source))
    if not _is_within(_resolved(path), _resolved(root)):
        return False
    pattern = Path(os.path.relpath(_local(source), root)).parts
    if any("**" in part for part in pattern):
        return True
    below = Path(os.path.relpath(_resolved(path), _resolved(root))).parts
    below = () if below == (".",) else below
    return len(pattern) > len(below) and all(fnmatch.fnmatch(name, part) for name, part in zip(below, pattern))


def inside(path: str, folder: str) -> bool:
    """Whether local ``path`` is ``folder`` (a folder or glob) or lies under it."""
    if is_remote(path) or is_remote(folder):
        return False
    return _is_within(_resolved(path), _resolved(_glob_root(folder)))


def _local(path: str) -> str:
    return os.path.expanduser(path[len("file://") :] if path.startswith("file://") else path)


def _resolved(path: str) -> Path:
    return Path(_local(path)).resolve()


def _literal(source: str) -> bool:
    """A path used as is: no glob characters, or an existing file named like ``data[1].jsonl``."""
    return not set("*?[") & set(source) or os.path.exists(_local(source))


def _glob_root(path: str) -> str:
    """The literal folder part of a glob (``data/*.jsonl`` -> ``data``); a literal path as is."""
    if os.path.exists(os.path.expanduser(path)):
        return path
    cut = min((path.find(ch) for ch in "*?[" if ch in path), default=-1)
    return path if cut < 0 else os.path.dirname(path[:cut]) or "."


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _what(target: Path) -> str:
    if target == Path(target.anchor):
        return "a filesystem root"
    if target == _resolved("~"):
        return "your home folder"
    return "the working directory"
