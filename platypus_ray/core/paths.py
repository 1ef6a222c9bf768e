"""Input paths: local files, folders and globs, or URIs (``s3://``, ``gs://`` through pyarrow's
filesystems; ``http(s)://`` and ``hf://datasets/...`` through fsspec), plain or compressed.

A compressed file (``.gz``, ``.bz2``, ``.xz``, ``.zst``) is read through a streaming decompressor
and counts as the format under its compression suffix (``data.jsonl.gz`` is JSONL). A URI that
cannot be reached is an :class:`InputError` naming it, the cause and what to do; never the
filesystem library's own traceback.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import lzma
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import pyarrow as pa
import pyarrow.fs as pafs

from platypus_ray.core.errors import InputError

_GLOB_CHARS = set("*?[")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_FSSPEC_SCHEMES = ("http", "https", "hf")
_CHUNK = 1 << 20


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def without_compression(name: str) -> str:
    """``data.jsonl.gz`` -> ``data.jsonl``; a name without a compression suffix as it is."""
    lowered = name.lower()
    return next((name[: -len(ext)] for ext in COMPRESSIONS if lowered.endswith(ext)), name)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a URI and the path inside it. http(s) and the Hugging Face hub
    come through fsspec (``HfFileSystem`` from huggingface_hub), wrapped as pyarrow filesystems."""
    scheme = path.split("://", 1)[0].lower()
    if scheme not in _FSSPEC_SCHEMES:
        return pafs.FileSystem.from_uri(path)
    if scheme == "hf":
        from huggingface_hub import HfFileSystem

        return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem())), path.split("://", 1)[1]
    return pafs.PyFileSystem(pafs.FSSpecHandler(_http_filesystem(scheme))), path


def _http_filesystem(scheme: str):
    """fsspec's HTTP filesystem with bounded waits: 30 s to connect, 120 s without a byte read."""
    import aiohttp
    import fsspec

    return fsspec.filesystem(scheme, client_kwargs={"timeout": aiohttp.ClientTimeout(sock_connect=30, sock_read=120)})


def unreachable(path: str, exc: BaseException) -> InputError:
    """The error for a URI that could not be listed or read: what failed and what to do."""
    scheme = path.split("://", 1)[0].lower()
    cause = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    if scheme == "hf":
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        fix = (
            "the Hugging Face hub is off here (HF_HUB_OFFLINE=1): download the files and give their local path, "
            "or unset HF_HUB_OFFLINE"
            if offline
            else "check the dataset name and path (hf://datasets/ORG/NAME/FILE), HF_TOKEN for a gated set, "
            "and the network"
        )
    elif scheme in ("http", "https"):
        fix = "check the address and the network, or download the file and give its local path"
    else:
        fix = "check the bucket and key, the credentials (AWS_*, GOOGLE_APPLICATION_CREDENTIALS) and the network"
    return InputError(f"cannot reach '{path}' ({cause}); {fix}")


def absolute_if_local(path: str) -> str:
    """An absolute path for an existing local path (Ray workers start in another folder);
    a hub id or URI stays as it is."""
    expanded = os.path.expanduser(path)
    return os.path.abspath(expanded) if os.path.exists(expanded) else path


def default_name(path: str) -> str:
    """A readable name for a source or benchmark: the file stem or folder name, cut at a glob's
    ``*`` or ``?``. Pure text (configs call it): ``[`` stays, as a file may be named data[1].jsonl."""
    stem = path.rstrip("/").split("/")[-1]
    for ch in "*?":
        stem = stem.split(ch)[0]
    return Path(stem).stem or "data"


def expand_files(path: str, extensions: tuple[str, ...]) -> list[str]:
    """The files a path names, sorted, so that row order (and thus ``source_index``) is stable."""
    if is_remote(path):
        return _expand_remote(path, extensions)
    if path.startswith("file://"):
        path = path[len("file://") :]
    if _GLOB_CHARS & set(path) and not os.path.exists(path):  # an existing path is literal, even data[1].jsonl
        return sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    if os.path.isdir(path):
        found = [str(p) for p in Path(path).rglob("*") if p.is_file() and _has_extension(p.name, extensions)]
        return sorted(found)
    return [path] if os.path.isfile(path) else []


def _expand_remote(path: str, extensions: tuple[str, ...]) -> list[str]:
    """A remote file as itself, or the files under a remote folder (not for http: no listings)."""
    scheme = path.split("://", 1)[0]
    try:
        if scheme.lower() in ("http", "https"):  # fsspec itself: pyarrow's wrapper reads "unreachable" as "no file"
            _http_filesystem(scheme.lower()).info(path)
            return [path]
        fs, root = filesystem(path)
        if fs.get_file_info(root).type == pafs.FileType.File:
            return [path]
        files = [
            i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File
        ]
    except Exception as exc:  # noqa: BLE001 - each filesystem library raises its own kinds (OSError, aiohttp, hub)
        raise unreachable(path, exc) from None
    return sorted(f"{scheme}://{f}" for f in files if _has_extension(f, extensions))


def open_input(path: str) -> BinaryIO:
    """A binary input stream for a local path or a URI, decompressed by its suffix (``.gz``, ``.bz2``,
    ``.xz``, ``.zst``). Opening a URI that cannot be reached raises :func:`unreachable`'s error."""
    if is_remote(path):
        try:
            fs, inner = filesystem(path)
            raw = fs.open_input_stream(inner, compression=None)  # decompressed below, for every scheme alike
        except Exception as exc:  # noqa: BLE001 - as in _expand_remote
            raise unreachable(path, exc) from None
    else:
        raw = open(path, "rb")  # noqa: SIM115 - returned open: the caller's `with` closes it
    suffix = next((ext for ext in COMPRESSIONS if path.lower().endswith(ext)), None)
    # typeshed declares these decompressors io.BufferedIOBase, not typing.BinaryIO (nominal): they are
    # the binary streams (read, close, `with`) the callers use
    if suffix == ".gz":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw))
    if suffix == ".bz2":
        return cast(BinaryIO, bz2.BZ2File(raw))
    if suffix == ".xz":
        return cast(BinaryIO, lzma.LZMAFile(raw))
    if suffix == ".zst":
        stream = raw if isinstance(raw, pa.NativeFile) else pa.PythonFile(raw, mode="r")
        return pa.CompressedInputStream(stream, "zstd")
    return raw


def lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of a binary stream, split on ``\\n`` only (kept at each line's end), read in 1 MiB
    chunks: a compressed or remote file is never held whole."""
    rest = b""
    while chunk := stream.read(_CHUNK):
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from (part + b"\n" for part in parts)
    if rest:
        yield rest


def input_path_problem(path: str, extensions: tuple[str, ...]) -> str | None:
    """Why a local path names no readable file, saying what is there instead; None when it names
    one (a URI is checked when read: no network calls before a stage starts)."""
    if is_remote(path) or expand_files(path, extensions):
        return None
    probe = Path(path.split("*")[0].split("?")[0] or ".")
    folder = probe if probe.is_dir() else probe.parent
    if not folder.is_dir():
        return f"'{path}' does not exist (no folder '{folder}' either)"
    visible = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    listing = ", ".join(visible[:12]) + (", ..." if len(visible) > 12 else "") if visible else "nothing visible"
    kinds = "/".join(extensions)
    if Path(path).is_dir():
        what = f"holds no .{kinds} file"
    elif _GLOB_CHARS & set(path):
        what = f"matches no .{kinds} file"
    else:
        what = "does not exist"
    return f"'{path}' {what}; '{folder}' holds: {listing}"


def _has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return any(without_compression(name).lower().endswith("." + ext) for ext in extensions)


def read_text(path: str) -> str | None:
    """A small text file at a local path or URI; None when it does not exist."""
    if not is_remote(path):
        return Path(path).read_text() if os.path.isfile(path) else None
    fs, inner = filesystem(path)
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
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.File
