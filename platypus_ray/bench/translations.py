"""The GNOME help's English paragraphs and their human Chinese translations (Debian's
``gnome-user-docs``), paired by page and position: the translation set both multilingual
calibrations read (``bench.multilingual`` and ``bench.multilingual_refine``)."""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import subprocess
from pathlib import Path

HELP = Path("/usr/share/help")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
MIN_WORDS = 8
_PARAGRAPH = re.compile(r"<p(?:\s[^>]*)?>(.*?)</p>", re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def ensure_docs() -> bool:
    """The English and Chinese GNOME help, installed with apt when absent and allowed."""
    if (HELP / "zh_CN" / "gnome-help").is_dir():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("skip: gnome-user-docs is not installed and this process cannot apt-get it (needs root)")
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "gnome-user-docs"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            print(f"skip: {' '.join(command)} failed: {done.stderr.strip()[-300:]}")
            return False
    return (HELP / "zh_CN" / "gnome-help").is_dir()


def paragraphs(page: Path) -> list[str]:
    """The text of each ``<p>`` of a Mallard page, markup removed, whitespace collapsed."""
    text = page.read_text(encoding="utf-8")
    return [" ".join(html.unescape(_TAG.sub("", p)).split()) for p in _PARAGRAPH.findall(text)]


def translation_pairs(root: Path = HELP) -> list[tuple[str, str]]:
    """(English, Chinese) paragraphs paired by page and position, one pair per English text."""
    from platypus_ray.refine.languages import dominant_script

    pairs: dict[str, str] = {}
    english = root / "C" / "gnome-help"
    for zh_page in sorted((root / "zh_CN" / "gnome-help").glob("*.page")):
        en, zh = paragraphs(english / zh_page.name) if (english / zh_page.name).exists() else [], paragraphs(zh_page)
        if len(en) != len(zh):
            continue
        for e, z in zip(en, zh):
            if len(e.split()) >= MIN_WORDS and dominant_script(z) == "han" and e not in pairs:
                pairs[e] = z
    return list(pairs.items())


def in_dev(text: str) -> bool:
    """The dev half of the pairs (the other half reports): by a hash of the English text."""
    return hashlib.sha256(text.encode()).digest()[0] % 2 == 0
