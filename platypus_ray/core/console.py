"""The console shows the project's own lines; known library noise goes to a log file.

Every line the driver writes passes through here: its own prints and logs, Python warnings,
and what Ray forwards from workers and actors (Ray prints those with the driver's
``sys.stdout``/``sys.stderr`` of the moment). A line matching a known-noise pattern below is
appended to ``<outputs>/logs/<command>.log`` instead; everything else prints as before. A line
that looks like a real problem (NaN, out of memory, an error, a dead worker) always prints, even
inside a noise block. ``--verbose`` installs nothing: the console shows everything.

Progress bars (Ray Data's on a tty only: ``runtime.init_ray``) redraw with ``\\r``: on a tty such
writes pass straight through, never held for a newline; on a non-tty each redraw is a line, and
tqdm's bars are routed. C++ log lines of the driver process itself go to
the file descriptor directly and are not seen here.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import sys
import threading
from typing import TextIO

# (pattern, why it is noise). Matched against a line without Ray's "(Actor pid=N)" prefix.
NOISE: tuple[tuple[str, str], ...] = (
    (
        r"^\S+:\d+: \w*(FutureWarning|DeprecationWarning): ",
        "a library's deprecation warning (transformers, Ray, SQLAlchemy): its authors' to-do, not the run's",
    ),
    (r"Reporting training result \d+: TrainingReport\(", "Ray Train's per-report dump of every metric"),
    (
        r"DeepSpeed \S+ built successfully|Using \S+ as PyTorch extensions root|Emitting ninja build file|"
        r"Building extension module|Loading extension module|^ninja: no work to do|Time to load \S+ op:",
        "DeepSpeed's JIT op build",
    ),
    (r"Progress bars disabled\. To enable", "Ray Data turned its bars off on a non-tty, as asked"),
    (r"Token authentication is enabled for this Ray cluster", "the local instance this project started"),
    (
        r"has constructor arguments in the object store and max_restarts > 0",
        "Ray's note on Ray Train's drain-watcher actor, on a cluster (runtime.init_ray turns the watcher off locally)",
    ),
    (
        r"PYTHON worker processes have been started on node: .* the maximum expected startup concurrency",
        "the raylet counts every actor (Train workers, Ray Data's) against 4x the CPU count; its only switch, "
        "worker_maximum_startup_concurrency, would change how many workers start at once, not just the note",
    ),
    (
        r"Setting accelerator to CPU\. If you have GPU",
        "DeepSpeed saw no GPU: one the config asks for and cannot see is its own error (devices.actor_device)",
    ),
    (
        r"^\s*\d+%\|[^|]*\| \d+/\d+ \[|^Generating \w+ split: \d+ examples",
        "tqdm bars (lm-eval, datasets) on a non-tty: on a tty their redraws pass through",
    ),
)
# A line that may signal a real problem is never routed away.
PROBLEM = re.compile(
    r"\bnan\b|out of memory|\bOOM\b|OutOfMemory|Traceback|\w*Error\b|\bfailed\b|\bdied\b|"
    r"\bkilled\b|SIGKILL|SIGTERM",
    re.IGNORECASE,
)
_NOISE = re.compile("|".join(f"(?:{pattern})" for pattern, _ in NOISE))
_RAY_PREFIX = re.compile(r"^(?:\x1b\[\d+m)?\([^)]*\)(?:\x1b\[0m)? ")  # "(RayTrainWorker pid=9045) "
_REDRAW = re.compile(r"\r|\x1b\[\d*[A-HJK]")  # carriage return, cursor moves, line erase (not colours)
_CONTINUATION = re.compile(r"^\s+\S")  # a warning's source line, indented under its header


class NoiseLog:
    """Where routed lines go: a file created on the first one; lines before the folder is known
    (the config is read after Ray's import may already log) are held in memory until then."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.lines = 0
        self._held: list[str] = []
        self._lock = threading.Lock()

    def use(self, path: str) -> None:
        with self._lock:
            self.path = path
            held, self._held = self._held, []
            if held:
                self._append(path, held)

    def write(self, lines: list[str]) -> None:
        with self._lock:
            self.lines += len(lines)
            if self.path is None:
                self._held.extend(lines)
            else:
                self._append(self.path, lines)

    def _append(self, path: str, lines: list[str]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(line if line.endswith("\n") else line + "\n" for line in lines)


def is_noise(line: str) -> bool:
    """A known library line that signals no problem."""
    text = _RAY_PREFIX.sub("", line)
    return bool(_NOISE.search(text)) and not PROBLEM.search(text)


class RoutedStream(io.TextIOBase):
    """A text stream that passes lines on to ``target`` and routes noise lines to ``log``."""

    def __init__(self, target: TextIO, log: NoiseLog):
        self.target, self.log = target, log
        self._tty = bool(getattr(target, "isatty", lambda: False)())
        self._partial = ""
        self._in_noise_block = False  # the header of a multi-line warning was routed
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        written = len(text)
        with self._lock:
            text, self._partial = self._partial + text, ""
            *lines, rest = text.split("\n")
            if not self._tty:  # a log file: each redraw of a bar is a line of its own
                lines = [
                    part
                    for line in lines
                    for part in (line.split("\r") if "\r" in line else [line])
                    if part or "\r" not in line
                ]
            kept = [line for line in lines if not self._route(line)]
            if kept:
                self.target.write("\n".join(kept) + "\n")
            if self._tty and _REDRAW.search(rest):  # a progress-bar redraw: show it now
                self.target.write(rest)
            else:
                self._partial = rest
        return written

    def _route(self, line: str) -> bool:
        text = _RAY_PREFIX.sub("", line)
        if self._in_noise_block and _CONTINUATION.match(text) and not PROBLEM.search(text):
            self.log.write([line])
            return True
        self._in_noise_block = is_noise(line)
        if self._in_noise_block:
            self.log.write([line])
        return self._in_noise_block

    def flush(self) -> None:
        """On a tty a partial line shows now (a prompt, a bar); in a log file it waits for its
        newline: tqdm flushes after every redraw, and a half line cannot be judged."""
        with self._lock:
            if self._tty:
                self.write_partial()
            self.target.flush()

    def write_partial(self) -> None:
        """The held half line as it stands (at exit): judged as a line in a log file."""
        with self._lock:
            partial, self._partial = self._partial, ""
            try:
                if partial and self._tty:
                    self.target.write(partial)
                elif partial:
                    self.write(partial + "\n")
            except ValueError:  # the target was closed first (a test's captured stream)
                pass

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # typeshed: a writeable attribute; CPython's is read-only
        return getattr(self.target, "encoding", "utf-8")

    @property
    def buffer(self):  # bytes written here bypass the routing
        return self.target.buffer


_log: NoiseLog | None = None


def install() -> NoiseLog:
    """Route this process's console noise (idempotent); :func:`use_log_dir` says where it goes."""
    global _log
    if _log is None:
        _log = NoiseLog()
        sys.stdout = RoutedStream(sys.stdout, _log)
        sys.stderr = RoutedStream(sys.stderr, _log)
        for stream in (sys.stdout, sys.stderr):
            atexit.register(stream.write_partial)  # a last line without its newline
    return _log


def use_log_dir(folder: str, command: str) -> None:
    if _log is not None:
        _log.use(os.path.join(folder, "logs", f"{command}.log"))


def routed_note() -> str | None:
    """One closing line saying how much went to the log, or None when nothing did."""
    if _log is None or not _log.lines or _log.path is None:
        return None
    lines = f"{_log.lines} line{'s' if _log.lines != 1 else ''}"
    return f"({lines} of library output in {_log.path}; --verbose shows them here)"


# Where a config's outputs live. A replaced output (refine's, merge's) gets its logs beside it,
# not inside it; a storage folder of many runs holds them itself.
_REPLACED_OUTPUT_KEYS = ("output", "out", "refine.output", "merge.out", "evaluate.output")
_STORAGE_KEYS = ("run.storage_path", "train.run.storage_path")


def log_folder(cfg: object) -> str:
    """The folder whose ``logs/`` takes this command's noise: the common parent of its outputs."""
    from platypus_ray.core.paths import is_remote

    def value(key: str) -> object:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part, None)
        return node

    folders = [
        os.path.dirname(os.path.abspath(path))
        for key in _REPLACED_OUTPUT_KEYS
        if isinstance(path := value(key), str) and path and not is_remote(path)
    ]
    folders += [
        os.path.abspath(path)
        for key in _STORAGE_KEYS
        if isinstance(path := value(key), str) and path and not is_remote(path)
    ]
    if not folders:
        import tempfile

        return os.path.join(tempfile.gettempdir(), "platypus-ray")
    return os.path.commonpath(folders)
