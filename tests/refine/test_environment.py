"""A failing environment (a full disk, a read-only folder, a source that vanishes mid-run) is one
``error:`` line and exit code 2, never a traceback; the previous output stays whole and no
staging folder is left. Real filesystems: small tmpfs mounts made by the test (root only; the
tests skip where mounting is not allowed), and one injected ENOSPC in the write task itself."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from platypus_ray.cli import main
from platypus_ray.samples import sample_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def mount(tmp_path):
    """``mount(size, read_only=False)`` -> a fresh tmpfs folder, unmounted after the test."""
    points = []

    def make(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        points.append(point)
        return point

    yield make
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _corpus(path: Path, copies: int = 1) -> Path:
    rows = sample_rows()
    path.write_text(
        "".join(json.dumps({**r, "output": r["output"] + f" ({c})"}) + "\n" for c in range(copies) for r in rows)
    )
    return path


def _refine(corpus: Path, output: Path, cache: Path) -> list[str]:
    return [
        "refine",
        "--set",
        f"sources=[{{path: {corpus}}}]",
        "--set",
        f"output={output}",
        "--set",
        "benchmarks=[]",
        "--set",
        f"embedding.cache={cache}",
        "--set",
        "embedding.actors=1",
    ]


def _one_error_line(capsys, stage: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"platypus-ray {stage}: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def test_a_full_disk_is_one_error_and_the_old_output_stays_whole(ray_session, mount, tmp_path, capsys):
    disk = mount("3m")
    output, cache = disk / "out", tmp_path / "cache"
    assert main(_refine(_corpus(tmp_path / "small.jsonl"), output, cache)) == 0
    before = _snapshot(output)
    filler = disk / "filler"  # the test's own file: the disk is left with about one page free
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        handle.truncate(max(0, filler.stat().st_size - 8192))
    capsys.readouterr()

    assert main(_refine(_corpus(tmp_path / "big.jsonl", copies=20), output, cache)) == 2
    line = _one_error_line(capsys, "refine")
    assert "No space left on device" in line and str(disk) in line and "another disk" in line
    assert _snapshot(output) == before
    assert not [p for p in disk.iterdir() if p.name.startswith(".out.")]  # no staging or swap folder left


def test_a_full_cache_disk_is_a_warning_and_the_run_goes_on(ray_session, mount, tmp_path, capsys):
    disk = mount("64k")
    (disk / "filler").write_bytes(b"\0" * 56 * 1024)
    corpus = _corpus(tmp_path / "rows.jsonl", copies=3)
    assert main(_refine(corpus, tmp_path / "out", disk / "cache")) == 0
    out = capsys.readouterr().out
    assert "embedding cache:" in out and "not cached" in out
    assert not list((disk / "cache").rglob("*.parquet"))  # no partial shard left behind


def test_a_read_only_output_folder_fails_before_ray_starts(mount, tmp_path, capsys, monkeypatch, tiny_model):
    monkeypatch.setattr("platypus_ray.refine.stage.init_ray", lambda: pytest.fail("Ray started"))
    read_only = mount("1m", read_only=True)
    assert main(_refine(_corpus(tmp_path / "rows.jsonl"), read_only / "out", tmp_path / "cache")) == 2
    assert "is on a read-only filesystem" in _one_error_line(capsys, "refine")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert main(["merge", "--base", tiny_model, "--adapter", str(adapter), "--out", str(read_only / "merged")]) == 2
    assert "out: cannot write" in _one_error_line(capsys, "merge")


def test_a_source_that_vanishes_mid_run_is_one_error_naming_it(ray_session, tmp_path, capsys, monkeypatch):
    from platypus_ray.refine import stage

    corpus = _corpus(tmp_path / "rows.jsonl")
    listed = stage.list_source_files

    def list_then_lose(*args, **kwargs):
        files = listed(*args, **kwargs)
        corpus.unlink()  # after the check, before the read task
        return files

    monkeypatch.setattr(stage, "list_source_files", list_then_lose)
    assert main(_refine(corpus, tmp_path / "out", tmp_path / "cache")) == 2
    line = _one_error_line(capsys, "refine")
    assert f"cannot read '{corpus}'" in line and "No such file" in line
    assert not (tmp_path / "out").exists()


def test_the_write_task_reports_a_full_disk_as_a_value(tmp_path, monkeypatch):
    """The same failure where no tmpfs can be mounted: ENOSPC injected into the write task itself."""
    from platypus_ray.core.coded import Coded
    from platypus_ray.refine import input_rows, ledger
    from platypus_ray.refine.config import ColumnMapping
    from platypus_ray.refine.sources import SourceFile, parse_source_file

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1]))

    monkeypatch.setattr(ledger.pq, "write_table", full)
    path = tmp_path / "rows.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n')
    batch = parse_source_file(SourceFile("s", str(path), 0, "jsonl", ColumnMapping().model_dump()))
    state, _ = input_rows.start_state(batch, np.zeros(1, dtype=np.int16))
    state = input_rows.settle_state(batch, state, np.array([0]), 0, "all", [])[0]
    decisions = ledger.Decisions.of_rows(np.array([0]), Coded(np.array([0]), ["s"]), np.array([0]))
    out = ledger.write_block(batch, state, str(tmp_path), decisions.columns(ledger.IdLookup.empty()))
    assert "No space left on device" in out and "another disk" in out
