"""Input paths: local files, folders and globs, or any URI pyarrow's filesystems read (s3://, gs://)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pyarrow.fs as pafs

_GLOB_CHARS = set("*?[")


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def absolute_if_local(path: str) -> str:
    """An absolute path for an existing local path (Ray workers start in another folder);
    a hub id or URI stays as it is."""
    expanded = os.path.expanduser(path)
    return os.path.abspath(expanded) if os.path.exists(expanded) else path


def default_name(path: str) -> str:
    """A readable name for a source or benchmark: the file stem or folder name."""
    stem = path.rstrip("/").split("/")[-1]
    for ch in "*?[" if not os.path.exists(path) else "":  # an existing file may be named data[1].jsonl
        stem = stem.split(ch)[0]
    return Path(stem).stem or "data"


def expand_files(path: str, extensions: tuple[str, ...]) -> list[str]:
    """The files a path names, sorted, so that row order (and thus ``source_index``) is stable."""
    if is_remote(path):
        fs, root = pafs.FileSystem.from_uri(path)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            return [path]
        scheme = path.split("://", 1)[0]
        selector = pafs.FileSelector(root, recursive=True)
        files = [i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
        return sorted(f"{scheme}://{f}" for f in files if _has_extension(f, extensions))
    if path.startswith("file://"):
        path = path[len("file://") :]
    if _GLOB_CHARS & set(path) and not os.path.exists(path):  # an existing path is literal, even data[1].jsonl
        return sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    if os.path.isdir(path):
        found = [str(p) for p in Path(path).rglob("*") if p.is_file() and _has_extension(p.name, extensions)]
        return sorted(found)
    return [path] if os.path.isfile(path) else []


def open_input(path: str):
    """A binary input stream for a local path or a URI."""
    if is_remote(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs.open_input_stream(inner)
    return open(path, "rb")


def check_input_path(path: str, extensions: tuple[str, ...]) -> str:
    """Fail (as a config error) when a local path names no readable file; say what is there."""
    if is_remote(path):
        return path  # checked when read: no network calls during config validation
    if expand_files(path, extensions):
        return path
    probe = Path(path.split("*")[0].split("?")[0] or ".")
    folder = probe if probe.is_dir() else probe.parent
    if folder.is_dir():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:12]
        listing = ", ".join(entries) if entries else "nothing"
        kinds = "/".join(extensions)
        if Path(path).is_dir():
            what = f"holds no .{kinds} file"
        elif _GLOB_CHARS & set(path):
            what = f"matches no .{kinds} file"
        else:
            what = "does not exist"
        raise ValueError(f"'{path}' {what}; '{folder}' holds: {listing}")
    raise ValueError(f"'{path}' does not exist (no folder '{folder}' either)")


def _has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return any(name.lower().endswith("." + ext) for ext in extensions)


def read_text(path: str) -> str | None:
    """A small text file at a local path or URI; None when it does not exist."""
    if not is_remote(path):
        return Path(path).read_text() if os.path.isfile(path) else None
    fs, inner = pafs.FileSystem.from_uri(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_text(path: str, text: str) -> None:
    """Write a small text file at a local path or URI, creating parent folders."""
    write_bytes(path, text.encode())


def write_bytes(path: str, data: bytes) -> None:
    """Write a small file at a local path or URI, creating parent folders."""
    if not is_remote(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return
    fs, inner = pafs.FileSystem.from_uri(path)
    fs.create_dir(inner.rsplit("/", 1)[0])
    with fs.open_output_stream(inner) as stream:
        stream.write(data)


def is_file(path: str) -> bool:
    """Whether a local path or URI names an existing file."""
    if not is_remote(path):
        return os.path.isfile(path)
    fs, inner = pafs.FileSystem.from_uri(path)
    return fs.get_file_info(inner).type == pafs.FileType.File
