"""The docs site: every config key is described, the generated pages are current, and every command
shown in a fenced code block of README.md or docs/ parses with the real CLI parser (or names a bench
module and flags that exist), naming only repo paths that exist. No Ray is started."""

from __future__ import annotations

import glob
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from platypus_ray import cli
from platypus_ray.devtools import docs

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
REPO_DIRS = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - {"out"}


def test_every_config_field_has_a_description():
    missing = [
        f"{command}: {key} ({owner.__name__})"
        for command, spec in cli.COMMANDS.items()
        for key, owner, info in docs.config_fields(spec.config_class())
        if not (info.description or "").strip()
    ]
    assert not missing, "config fields without Field(description=...):\n" + "\n".join(missing)


def test_every_command_has_a_reference_page():
    assert set(docs.CONFIG_PAGES) == set(cli.COMMANDS)


def test_the_generated_pages_are_current():
    stale = docs.stale(DOCS)
    assert not stale, f"stale generated pages {stale}: run `python -m platypus_ray.devtools.docs`"


def test_benchmark_records_say_what_ran_where_and_when():
    records = docs.benchmark_records(DOCS)
    assert records, "no docs/benchmarks/*.json"
    for name, record in records.items():
        assert all(record.get(key) for key in docs.REQUIRED), f"{name}.json lacks one of {docs.REQUIRED}"
        assert record["command"].startswith("python -m platypus_ray.bench."), record["command"]


def test_the_nav_lists_every_page_and_only_pages_that_exist():
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=loader)  # a SafeLoader that skips python tags

    def pages(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in pages(item)]
        return [p for value in node.values() for p in pages(value)]

    nav = pages(config["nav"])
    excluded = set(config.get("exclude_docs", "").split())
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")} - excluded
    assert len(nav) == len(set(nav)), "a page is listed twice"
    assert not set(nav) - on_disk, f"nav pages that do not exist: {sorted(set(nav) - on_disk)}"
    assert not on_disk - set(nav), f"pages left out of the nav: {sorted(on_disk - set(nav))}"


# ---------------------------------------------------------------- commands shown in the docs


@dataclass
class Shown:
    where: str  # file:line
    words: list[str]  # the command's words, from the program on


def _fenced_blocks(text: str):
    """(first line number, info string, lines) of every fenced code block, indented ones included."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([^\s`{]*)", stripped)
            if match:
                fence, info, start, body = match.group(1), match.group(2).lower(), number + 1, []
        elif stripped.startswith(fence) and not stripped[len(fence) :].strip():
            yield start, info, body
            fence = None
        else:
            body.append(line)


def _logical_lines(start: int, lines: list[str]):
    """Lines with backslash continuations joined, a leading `$ ` prompt removed."""
    buffer, first = "", start
    for offset, line in enumerate(lines):
        if not buffer:
            first = start + offset
        buffer += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            yield first, re.sub(r"^\s*\$ ", "", buffer)
            buffer = ""
    if buffer:
        yield first, buffer


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in shown output: whitespace words, comment dropped
        return re.sub(r"(^|\s)#.*$", "", line).split()


def _is_operator(word: str) -> bool:
    return bool(word) and all(c in "();<>|&" for c in word)


def _commands(words: list[str]):
    """The commands of one shell line: runs of words between operators, redirections dropped."""
    current: list[str] = []
    skip_next = False
    for i, word in enumerate(words):
        if skip_next:
            skip_next = False
            continue
        if word.isdigit() and i + 1 < len(words) and words[i + 1].startswith(">"):
            continue  # the 2 of 2>&1
        if _is_operator(word):
            if current:
                yield current
            current = []
            skip_next = word in (">", ">>", "<", ">&") and not (i + 1 < len(words) and _is_operator(words[i + 1]))
            continue
        current.append(word)
    if current:
        yield current


def shown_commands() -> list[Shown]:
    """Every platypus-ray / python command in a shell fence of README.md or docs/**/*.md."""
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for start, info, lines in _fenced_blocks(path.read_text()):
            if info not in SHELL_FENCES:
                continue
            for number, line in _logical_lines(start, lines):
                for command in _commands(_words(line)):
                    for at, word in enumerate(command):
                        name = word.rsplit("/", 1)[-1]
                        if name == "platypus-ray" or re.fullmatch(r"python3?(\.\d+)?", name) or name == "make":
                            found.append(Shown(f"{path.relative_to(ROOT)}:{number}", command[at:]))
                            break
    return found


def _synopsis_free(words: list[str]) -> list[str]:
    """A usage line's `[--resume]` and `...` as plain words (documentation syntax, not arguments)."""
    out = []
    for word in words:
        word = word.strip("[]")
        if word and word not in ("...", "|"):
            out.append(word)
    return out


def _check_paths(shown: Shown, words: list[str]) -> list[str]:
    """Repo paths (jobs/configs/x.yaml, kuberay/..., tests/...) a command names must exist."""
    problems = []
    for word in words:
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        first = value.split("/", 1)[0]
        if "/" not in value or first not in REPO_DIRS or "$" in value or re.search(r"[A-Z]{3,}", value):
            continue
        if not glob.glob(str(ROOT / value)):
            problems.append(f"{shown.where}: {value} does not exist ({' '.join(shown.words)})")
    return problems


def _check(shown: Shown) -> list[str]:
    words = _synopsis_free(shown.words)
    program = words[0].rsplit("/", 1)[-1]
    if program == "make":
        targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:", (ROOT / "Makefile").read_text(), re.M))
        unknown = [w for w in words[1:] if not w.startswith("-") and "=" not in w and w not in targets]
        return [f"{shown.where}: make target {t} does not exist" for t in unknown]
    if program == "platypus-ray":
        args = words[1:]
    elif len(words) > 2 and words[1] == "-m" and words[2] == "platypus_ray":
        args = words[3:]
    elif len(words) > 2 and words[1] == "-m" and words[2].startswith("platypus_ray."):
        return _check_module(shown, words[2], words[3:]) + _check_paths(shown, words[3:])
    else:  # python jobs/x.py ..., python -m pytest tests/...: the paths must exist
        return _check_paths(shown, words[1:])
    if args and args[0].endswith(":"):  # shown output (`platypus-ray refine: error: ...`), not a command
        return []
    try:
        cli.build_parser().parse_args(args)
    except SystemExit as exit:
        if exit.code:
            return [f"{shown.where}: does not parse: {' '.join(shown.words)}"]
    return _check_paths(shown, args)


def _check_module(shown: Shown, module: str, args: list[str]) -> list[str]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return [f"{shown.where}: no module {module}"]
    origin = Path(spec.origin)
    source = (origin.parent / "__main__.py" if origin.name == "__init__.py" else origin).read_text()
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    return [f"{shown.where}: {module} has no option {f}" for f in flags if f'"{f}"' not in source]


def test_the_shown_commands_exist_and_parse():
    shown = shown_commands()
    assert len(shown) >= 10, f"found only {len(shown)} commands: is the fence parsing broken?"
    problems = [problem for command in shown for problem in _check(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ("platypus-ray refine --config jobs/configs/demo-refine.yaml --set dedup.keep=first", False),
        ("platypus-ray refine --confg x.yaml", True),
        ("platypus-ray refin --config x.yaml", True),
        ("python -m platypus_ray pipeline -c jobs/configs/nope.yaml 2>&1 | tee log", True),
        ("python -m platypus_ray.bench.refine --scale 1000 --json out/x.json", False),
        ("python -m platypus_ray.bench.refine --no-such-flag", True),
        ("make demo > /tmp/demo.log 2>&1; wc -l", False),
        ("platypus-ray refine: error: invalid config (jobs/configs/demo-refine.yaml):", False),
    ],
)
def test_the_command_check_catches_what_it_should(line, bad):
    commands = [Shown("x:1", c) for c in _commands(_words(line)) if c[0] in ("platypus-ray", "python", "make")]
    assert commands
    assert bool([problem for command in commands for problem in _check(command)]) == bad


def test_the_benchmarks_page_shows_every_record():
    page = (DOCS / "benchmarks.md").read_text()
    for name, record in docs.benchmark_records(DOCS).items():
        assert f"(benchmarks/{name}.json)" in page
        assert record["command"] in page
