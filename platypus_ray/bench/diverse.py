"""Diverse real text at >= 500k rows: `platypus-ray refine` against SemHash on paragraphs of Debian's
documentation (issue 35, "Benchmarks"):

    python -m platypus_ray.bench.diverse [--rows 500000] [--packages ...] [--no-reference] [--json FILE]

The corpus: the documentation packages (``linux-doc-<version>``, ``python3.<minor>-doc``, ``dict-gcide``,
``gnome-user-docs``, ``wordnet-base``; installed with apt when absent, which needs root: without it, or
when apt fails, the bench prints one ``skip:`` line and exits 0), then the man pages and the rest of
``/usr/share/doc`` on this machine. Each file is read as what it is (HTML and Mallard/XML with the markup
stripped, man pages' roff roughly (requests dropped, font escapes removed), WordNet's glosses, plain
text and gzip/dictzip), split on blank lines, whitespace collapsed; a paragraph is kept when it has >= 8
words, at least half of them with a letter (tables of numbers and hex dumps are not prose), and no
earlier paragraph has the same refine exact-dedup key (so refine's exact dedup finds nothing: every
row reaches semantic dedup). The order is deterministic (groups in the order above, files sorted,
paragraphs in file order); ``--rows`` of them are drawn with a seed and kept in that order. They are
written as Alpaca rows (``instruction`` the paragraph, ``input`` empty, ``output`` "-": refine treats
an empty output as invalid).

The comparison is ``bench.versus_semhash``'s: one ``platypus-ray refine`` process (static encoder,
threshold 0.8, keep first, cache off, no benchmarks, ``dedup.mode`` auto unless ``--mode``) and one
SemHash 0.5.0 process on the same file and model2vec model, each timed from process start to exit;
then the brute-force greedy rule over the same vectors (unless ``--no-reference``) and how many kept
rows each side gets wrong. The brute force is devtools' one-vs-kept rule in float64, computed in
blocks (:func:`blocked_greedy`: float32 GEMMs, every pair within 1e-4 of the threshold redone in
float64), which is the same keep mask at a GEMM's speed; at <= 50,000 rows the bench checks that
against ``greedy_reference`` itself.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from platypus_ray.bench.machine import provenance

MIN_WORDS = 8
THRESHOLD = 0.8
EPS = 1e-4  # float32 dot products of unit vectors are within this of float64's
MAN = Path("/usr/share/man")
DOC = Path("/usr/share/doc")
WORDNET_DATA = re.compile(r"/wordnet/data\.(noun|verb|adj|adv)$")
HELP_ENGLISH = "/usr/share/help/C/"

# Files that are code, pictures, fonts or archives, not prose (checked after a .gz/.dz is taken off).
_SKIP_EXT = re.compile(
    "js|css|svg|png|jpg|jpeg|gif|ico|bmp|webp|webm|ogg|mp3|mp4|woff|woff2|ttf|otf|eot|pdf|ps|eps|dvi|"
    "json|map|inv|py|pyc|c|h|cc|cpp|hpp|sh|bash|pl|pm|rb|go|rs|java|el|lua|tcl|awk|sed|mk|cmake|make|"
    "mo|po|pot|gmo|zip|tar|tgz|bz2|xz|zst|lz|lzma|7z|so|a|o|bin|dat|db|sqlite|dot|yaml|yml|toml|ini|"
    "cfg|conf|diff|patch|index|exc|rev|vrb|gpg|asc|pem|crt|key|der|sig"
)
_MARKUP_EXT = {"html", "htm", "xhtml", "page", "xml", "docbook", "sgml"}
_INLINE = re.compile(
    "a|span|em|strong|b|i|u|s|q|code|tt|kbd|var|samp|sub|sup|abbr|cite|small|big|dfn|mark|time|font|"
    "wbr|img|link|gui|guiseq|key|keyseq|cmd|file|app|sys|input|output"
)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_DROPPED = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.S | re.I)
_TAG = re.compile(r"<(/?)([A-Za-z][\w:.-]*)?[^>]*>")
_BLANK = re.compile(r"\n[ \t\r\f\v]*\n")
# roff: named characters first, then every other escape (fonts, sizes, strings, zero-width) dropped.
_ROFF_CHARS = {
    r"\-": "-",
    r"\(em": "-",
    r"\(en": "-",
    r"\(hy": "-",
    r"\(aq": "'",
    r"\(dq": '"',
    r"\(lq": '"',
    r"\(rq": '"',
    r"\(oq": "'",
    r"\(cq": "'",
    r"\(bu": "*",
    r"\(co": "(c)",
    r"\e": "\\",
    r"\ ": " ",
    r"\~": " ",
    r"\0": " ",
}
_ROFF_CHAR = re.compile("|".join(re.escape(k) for k in sorted(_ROFF_CHARS, key=len, reverse=True)))
_ROFF_ESCAPE = re.compile(
    r"\\(?:[fFsmnk*gV$](?:\[[^\]]*\]|\([^\n]{2}|[+-]?\d+|.)|\([^\n]{2}|\[[^\]]*\]|[hvwlLoxbDNRSXZz]'[^']*'|.)"
)
_ROFF_BREAKS = re.compile("SH|SS|PP|P|LP|TP|TQ|IP|HP|sp|RS|RE|TH|nf|fi|EX|EE|TS|TE|Sh|Ss|Pp|Bl|El|It|Bd|Ed|bp|in|ti")
_ROFF_TEXT = re.compile("B|I|BR|IR|RB|RI|BI|IB|SM|SB|SH|SS|IP")


# ---------------------------------------------------------------- the packages


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip().endswith(" installed")


def _newest(pattern: str) -> str | None:
    """The installed package whose name matches ``pattern`` (a regex), else apt's newest version of it."""
    found = subprocess.run(["apt-cache", "search", "--names-only", pattern], capture_output=True, text=True)
    names = sorted({line.split(" - ")[0] for line in found.stdout.splitlines() if line.strip()})
    if not names:
        return None
    installed = [n for n in names if _installed(n)]

    def version(name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", name))

    return max(installed or names, key=version)


def default_packages() -> list[str]:
    linux = _newest(r"^linux-doc-[0-9.]+$")
    python = _newest(r"^python3\.[0-9]+-doc$")
    return [p for p in (linux, python) if p] + ["dict-gcide", "gnome-user-docs", "wordnet-base"]


def ensure_packages(packages: list[str]) -> str | None:
    """Install the missing ``packages`` with apt; the reason they cannot be, or None when all are there."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return f"{', '.join(missing)} not installed and this process cannot apt-get them (needs apt and root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    for command in (["apt-get", "update", "-qq"], install):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    still = [p for p in packages if not _installed(p)]
    return f"apt did not install {', '.join(still)}" if still else None


def package_files(package: str) -> list[Path]:
    done = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True)
    return sorted(Path(line) for line in done.stdout.splitlines() if line.startswith("/") and Path(line).is_file())


def groups(packages: list[str]) -> list[tuple[str, list[Path]]]:
    """(name, files) in corpus order: each package's files, then the man pages, then /usr/share/doc's other
    files; a file belongs to the first group that lists it."""
    out: list[tuple[str, list[Path]]] = []
    seen: set[Path] = set()
    for package in packages:
        files = [f for f in package_files(package) if f not in seen]
        seen.update(files)
        out.append((package, files))
    for name, root, pattern in (("man pages", MAN, "man*/**/*"), ("/usr/share/doc", DOC, "**/*")):
        files = sorted(f for f in root.glob(pattern) if f not in seen and f.is_file())
        seen.update(files)
        out.append((name, files))
    return out


# ---------------------------------------------------------------- paragraphs


def _read(path: Path) -> str | None:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip and dictzip
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return None
    if b"\0" in raw[:4096]:
        return None
    return raw.decode("utf-8", errors="replace")


def _kind(path: Path) -> str | None:
    text = str(path)
    if "/_sources/" in text:  # Sphinx's copies of the sources beside the HTML: the same text again
        return None
    if text.startswith("/usr/share/help/") and not text.startswith(HELP_ENGLISH):
        return None  # the help's translations: English only (the static English encoder)
    if WORDNET_DATA.search(text):
        return "wordnet"
    name = path.name.lower()
    for suffix in (".gz", ".dz"):
        name = name.removesuffix(suffix)
    if text.startswith(f"{MAN}/"):
        return "roff"
    ext = name.rsplit(".", 1)[1] if "." in name else ""
    if ext in _MARKUP_EXT:
        return "markup"
    if _SKIP_EXT.fullmatch(ext):
        return None
    return "text"


def markup_text(text: str) -> str:
    """HTML or XML as text: scripts, styles and heads dropped, each tag that is not inline a paragraph break."""
    text = _DROPPED.sub(" ", _COMMENT.sub(" ", text))
    text = _TAG.sub(lambda m: " " if _INLINE.fullmatch((m.group(2) or "").lower()) else "\n\n", text)
    return html.unescape(text).replace("\u00b6", " ")


def roff_text(text: str) -> str:
    """A man page's roff, roughly: requests that break a paragraph become blank lines, font and text
    macros give their words, other requests and every escape are dropped."""
    out: list[str] = []
    in_definition = False
    for line in text.splitlines():
        if in_definition:
            in_definition = not line.startswith("..")
            continue
        if line.startswith(('.\\"', "'\\\"", '.\\"', '\\"')):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            name, args = parts[0], (parts[1] if len(parts) > 1 else "")
            if name in ("de", "de1", "am", "ig"):
                in_definition = True
                continue
            if _ROFF_BREAKS.fullmatch(name):
                out.append("")
            if _ROFF_TEXT.fullmatch(name) and args:
                words = [w.strip('"') for w in re.findall(r'"[^"]*"|\S+', args)]
                joiner = "" if len(name) == 2 and name not in ("SH", "SS", "IP", "SM", "SB") else " "
                out.append(_roff_line(joiner.join(words)))
                if name in ("SH", "SS", "IP"):
                    out.append("")
            continue
        out.append(_roff_line(line))
    return "\n".join(out)


def _roff_line(line: str) -> str:
    return _ROFF_ESCAPE.sub("", _ROFF_CHAR.sub(lambda m: _ROFF_CHARS[m.group(0)], line))


def wordnet_text(text: str) -> str:
    """WordNet's data file: one paragraph per synset, its words then its gloss (after ``|``)."""
    out = []
    for line in text.splitlines():
        if line.startswith("  ") or " | " not in line:  # the licence header
            continue
        head, gloss = line.split(" | ", 1)
        fields = head.split()
        words = [fields[4 + 2 * i].replace("_", " ") for i in range(int(fields[3], 16))]
        out.append(f"{', '.join(words)}: {gloss.strip()}")
    return "\n\n".join(out)


def file_paragraphs(path: Path) -> Iterator[str]:
    kind = _kind(path)
    if kind is None:
        return
    try:
        text = _read(path)
    except OSError:
        return
    if text is None:
        return
    if kind == "markup":
        text = markup_text(text)
    elif kind == "roff":
        text = roff_text(text)
    elif kind == "wordnet":
        text = wordnet_text(text)
    for block in _BLANK.split(text):
        words = block.split()
        if len(words) >= MIN_WORDS and 2 * sum(any(c.isalpha() for c in w) for w in words) >= len(words):
            yield " ".join(words)


def build_corpus(packages: list[str], rows: int, path: Path, seed: int = 0) -> dict:
    """Write ``rows`` distinct paragraphs (all of them when fewer) as an Alpaca JSONL; the counts per group."""
    from platypus_ray.refine.rows import dedup_key

    start = time.perf_counter()
    texts: list[str] = []
    origin: list[int] = []
    seen: set[int] = set()
    counts: dict[str, dict[str, int]] = {}
    names = []
    for number, (name, files) in enumerate(groups(packages)):
        names.append(name)
        found = distinct = 0
        for file in files:
            for paragraph in file_paragraphs(file):
                found += 1
                key = dedup_key(paragraph, "")
                if key in seen:
                    continue
                seen.add(key)
                distinct += 1
                texts.append(paragraph)
                origin.append(number)
        counts[name] = {"files": len(files), "paragraphs": found, "distinct": distinct}
        print(f"  {name}: {len(files)} files, {found} paragraphs, {distinct} distinct and new", flush=True)
    total = len(texts)
    chosen = sorted(random.Random(seed).sample(range(total), rows)) if rows < total else list(range(total))
    with path.open("w") as handle:
        for i in chosen:
            handle.write(json.dumps({"instruction": texts[i], "input": "", "output": "-"}) + "\n")
    in_sample = np.bincount(np.asarray(origin, dtype=np.int64)[chosen], minlength=len(names))
    for number, name in enumerate(names):
        counts[name]["in_corpus"] = int(in_sample[number])
    words = sum(len(texts[i].split()) for i in chosen)
    print(
        f"corpus: {total} distinct paragraphs, {len(chosen)} written ({words / max(len(chosen), 1):.1f} words on "
        f"average) in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return {
        "distinct_paragraphs": total,
        "rows": len(chosen),
        "mean_words": round(words / max(len(chosen), 1), 1),
        "per_group": counts,
    }


# ---------------------------------------------------------------- the reference, in blocks


def blocked_greedy(emb: np.ndarray, order: np.ndarray, threshold: float, block: int = 2048) -> np.ndarray:
    """``greedy_reference``'s keep mask (a row is removed iff its float64 cosine to a row kept before it
    is >= threshold), computed a block of rows at a time: float32 GEMMs against the kept rows and within
    the block, and every pair within ``EPS`` of the threshold redone in float64."""
    vectors = np.ascontiguousarray(np.asarray(emb, dtype=np.float32)[order])
    n, dim = vectors.shape
    kept = np.empty((n, dim), dtype=np.float32)
    n_kept = 0
    keep = np.zeros(n, dtype=bool)
    low = threshold - EPS
    for start in range(0, n, block):
        rows = vectors[start : start + block]
        removed = np.zeros(len(rows), dtype=bool)
        for at in range(0, n_kept, 16384):  # against the rows kept in earlier blocks
            chunk = kept[at : min(at + 16384, n_kept)]
            near_r, near_c = np.nonzero(rows @ chunk.T >= low)
            if near_r.size:
                exact = np.einsum("ij,ij->i", rows[near_r].astype(np.float64), chunk[near_c].astype(np.float64))
                removed[near_r[exact >= threshold]] = True
        inner = rows @ rows.T
        local = np.zeros(len(rows), dtype=bool)
        for i in np.nonzero(~removed)[0]:  # within the block, in order
            near = np.nonzero(local[:i] & (inner[i, :i] >= low))[0]
            if near.size and np.max(rows[near].astype(np.float64) @ rows[i].astype(np.float64)) >= threshold:
                continue
            local[i] = True
        kept[n_kept : n_kept + int(local.sum())] = rows[local]
        n_kept += int(local.sum())
        keep[start : start + len(rows)] = local
    out = np.zeros(n, dtype=bool)
    out[order] = keep
    return out


_CHECKED: dict[str, Any] = {}


def _checked_blocked(emb: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """The blocked reference; at <= 50,000 rows also devtools' ``greedy_reference``, which it must equal."""
    from platypus_ray.devtools.dedup_reference import greedy_reference

    start = time.perf_counter()
    keep = blocked_greedy(emb, order, threshold)
    _CHECKED["blocked_s"] = round(time.perf_counter() - start, 1)
    if len(emb) <= 50_000:
        start = time.perf_counter()
        plain = greedy_reference(emb, order, threshold)
        _CHECKED["greedy_reference_s"] = round(time.perf_counter() - start, 1)
        _CHECKED["blocked_equals_greedy_reference"] = bool(np.array_equal(plain, keep))
        if not _CHECKED["blocked_equals_greedy_reference"]:
            print(f"WARNING: the blocked reference differs from greedy_reference on {int((plain ^ keep).sum())} rows")
    return keep


# ---------------------------------------------------------------- the run


def _dedup_summary(dedup: dict) -> dict:
    """stats.json's dedup section without its long per-round lists."""
    out: dict[str, Any] = {}
    for key, value in dedup.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if not (isinstance(v, list) and len(v) > 12)}
        elif isinstance(value, list) and len(value) > 12:
            continue
        out[key] = value
    return out


def run(
    packages: list[str],
    rows: int,
    threshold: float,
    mode: str | None,
    reference: bool,
    seed: int,
    json_path: Path | None,
    corpus_copy: Path | None,
) -> dict | None:
    from platypus_ray.bench.versus_semhash import _difference, _reference_kept, _static_model_folder, measure_on_corpus

    record = provenance("platypus_ray.bench.diverse")
    print(f"packages: {', '.join(packages)}; load average {record['load_average']}", flush=True)
    reason = ensure_packages(packages)
    if reason:
        print(f"skip: {reason}")
        return None
    versions = {
        p: subprocess.run(["dpkg-query", "-W", "-f=${Version}", p], capture_output=True, text=True).stdout.strip()
        for p in packages
    }
    try:
        import semhash  # noqa: F401
    except ImportError:
        print("skip: SemHash is not installed (pip install '.[bench]')")
        return None
    with tempfile.TemporaryDirectory(prefix="platypus-ray-diverse-") as tmp:
        folder = Path(tmp)
        corpus_path = folder / "corpus.jsonl"
        corpus = build_corpus(packages, rows, corpus_path, seed)
        if corpus_copy:
            corpus_copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(corpus_path, corpus_copy)
        n = corpus["rows"]
        print(f"refine, then SemHash, on {n} rows (threshold {threshold}, mode {mode or 'auto'}) ...", flush=True)
        measured = measure_on_corpus(
            corpus_path, folder, "debian-docs", threshold, reference=False, dedup={"mode": mode} if mode else None
        )
        stats = measured.stats
        dedup = stats.get("dedup") or {}
        result: dict[str, Any] = {
            "rows": n,
            "threshold": threshold,
            "packages": versions,
            "corpus": corpus,
            "refine_wall_s": round(measured.refine_s, 1),
            "semhash_wall_s": round(measured.semhash_s, 1),
            "speed_vs_semhash": round(measured.semhash_s / measured.refine_s, 2),  # above 1: refine is faster
            "refine": {
                "kept": len(measured.ours),
                "mode_asked": mode or "auto",
                "dedup_mode": dedup.get("mode"),
                "timings_s": stats["timings_s"],
                "driver_peak_rss_mb": stats["driver_peak_rss_mb"],
                "exact_duplicates_removed": (stats.get("removed") or {}).get("exact_duplicate"),
                "dedup": _dedup_summary(dedup),
            },
            "semhash": {"kept": len(measured.theirs)},
            "refine_vs_semhash_differs": len(measured.ours ^ measured.theirs),
        }
        print(
            f"diverse, {n} rows at {threshold}: refine {measured.refine_s:.1f} s (dedup {dedup.get('mode')}), "
            f"SemHash {measured.semhash_s:.1f} s: refine at {result['speed_vs_semhash']}x SemHash's speed",
            flush=True,
        )
        print(f"  why: {dedup.get('why')}")
        print(
            "  refine steps (s): "
            + ", ".join(f"{k} {v}" for k, v in stats["timings_s"].items())
            + f"; driver peak RSS {stats['driver_peak_rss_mb']} MB"
        )
        if dedup.get("certificate"):
            print(f"  certificate: {dedup['certificate']}")
        print(f"  kept: refine {len(measured.ours)}, SemHash {len(measured.theirs)}", flush=True)
        _write(json_path, record, result)  # the comparison stands on its own before the brute force runs
        if reference:
            start = time.perf_counter()
            truth, _ = _reference_kept(corpus_path, _static_model_folder(), threshold, _checked_blocked)
            result["brute_force_kept"] = len(truth)
            result["brute_force_s"] = round(time.perf_counter() - start, 1)
            result["brute_force"] = dict(_CHECKED)
            result["refine"].update(_difference(measured.ours, truth))
            result["semhash"].update(_difference(measured.theirs, truth))
            print(
                f"  brute force keeps {len(truth)} ({result['brute_force_s']} s); differ from it: refine "
                f"{result['refine']['kept_differs']}, SemHash {result['semhash']['kept_differs']}"
            )
            if _CHECKED.get("blocked_equals_greedy_reference") is not None:
                print(f"  blocked reference equals greedy_reference: {_CHECKED['blocked_equals_greedy_reference']}")
            _write(json_path, record, result)
    return result


def _write(json_path: Path | None, record: dict, result: dict) -> None:
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({**record, "diverse": result}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platypus_ray.bench.diverse", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000, help="paragraphs in the corpus (default 500000)")
    parser.add_argument(
        "--packages",
        nargs="+",
        help="the Debian packages (default: linux-doc, python3.x-doc, dict-gcide, gnome-user-docs, wordnet-base)",
    )
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--mode", choices=["auto", "kept", "exact", "clustered"], help="refine's dedup.mode")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    parser.add_argument("--no-reference", action="store_true", help="skip the brute-force kept set")
    parser.add_argument("--corpus", type=Path, help="also keep the corpus JSONL here")
    parser.add_argument("--json", type=Path, help="write the record here ({provenance..., 'diverse': {...}})")
    args = parser.parse_args(argv)
    packages = args.packages or default_packages()
    run(packages, args.rows, args.threshold, args.mode, not args.no_reference, args.seed, args.json, args.corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
