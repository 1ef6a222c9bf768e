"""Refine under faults: an embedding actor killed mid-run changes nothing in the output, and
a run that fails while writing leaves the previous output whole (a rerun that succeeds
replaces it whole: tests/refine/test_refine_e2e.py)."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import pandas as pd
import psutil
import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.refine import RefineConfig, run

pytestmark = pytest.mark.slow
EMBED_ACTOR = "ray::MapWorker(MapBatches(Embedder))"
PIPELINE_WORK = ("ray::MapBatches(", "ray::MapWorker(", "ray::SortShuffle")  # a refine's Ray Data tasks and actors


def write_corpus(path, n: int = 800) -> None:
    """Varied rows with some near-duplicates, enough for a few seconds of embedding."""
    rng = random.Random(0)
    topics = ["rivers", "volcanoes", "bread", "chess", "satellites", "orchids", "tax law", "violins", "glaciers"]
    verbs = ["Explain", "Describe", "Summarize", "Give three facts about", "Write a haiku about", "List uses of"]
    rows = []
    for i in range(n):
        instruction = (
            f"{rng.choice(verbs)} {rng.choice(topics)} for reader number {i % 400} in {rng.randrange(10**6)} words."
        )
        rows.append(
            {"instruction": instruction, "input": "", "output": f"Answer {i}: " + " ".join(rng.sample(topics, 4))}
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def config(corpus, output) -> RefineConfig:
    # Each run its own embedding cache: a shared one would serve the second run without any actor.
    return validate_config(
        RefineConfig,
        {
            "sources": [{"path": str(corpus), "name": "gen"}],
            "output": str(output),
            "embedding": {"actors": 2, "batch_size": 16, "cache": str(output) + "-cache"},
            "dedup": {"threshold": 0.9, "keep": "first"},
        },
    )


def embed_actors() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):  # this session's local Ray only
        try:
            if proc.cmdline() and proc.cmdline()[0].startswith(EMBED_ACTOR):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def test_an_embedding_actor_killed_mid_run_changes_nothing(ray_session, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus)
    calm = run(config(corpus, tmp_path / "calm"))

    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(result=run(config(corpus, tmp_path / "killed"))))
    worker.start()
    victim = None
    deadline = time.time() + 180
    while victim is None and time.time() < deadline and worker.is_alive():
        actors = [p for p in embed_actors() if time.time() - p.create_time() > 4]  # model loaded, encoding
        if actors:
            victim = actors[0]
            victim.send_signal(signal.SIGKILL)
        time.sleep(0.1)
    worker.join(timeout=300)
    assert victim is not None, "no embedding actor to kill (the run ended first)"
    result = outcome["result"]

    for folder in ("kept", "ledger"):
        before = pd.read_parquet(tmp_path / "calm" / folder)
        after = pd.read_parquet(tmp_path / "killed" / folder)
        pd.testing.assert_frame_equal(before, after)
    assert result.kept == calm.kept and result.input_rows == 800
    assert result.stats["embedding"]["computed"] == calm.stats["embedding"]["computed"] == 800


def test_an_output_replaced_by_a_failed_run_stays_whole(tmp_path):
    """Refine writes into a staging folder that takes the output's place only on success."""
    from platypus_ray.core.outputs import replaced_atomically

    output = tmp_path / "out"
    with replaced_atomically(str(output), "test") as staging:
        (staging / "kept").mkdir()
        (staging / "kept" / "part-0.parquet").write_text("old")
        (staging / "stats.json").write_text("{}")
    with pytest.raises(OSError, match="disk full"), replaced_atomically(str(output), "test") as staging:
        (staging / "kept").mkdir()
        (staging / "kept" / "part-0.parquet").write_text("new")
        raise OSError("disk full")  # e.g. while writing report.html
    from platypus_ray.core.outputs import MARKER

    assert sorted(str(p.relative_to(output)) for p in output.rglob("*")) == [
        MARKER,
        "kept",
        "kept/part-0.parquet",
        "stats.json",
    ]
    assert (output / "kept" / "part-0.parquet").read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_ctrl_c_mid_run_is_one_line_exit_130_and_the_old_output_stays(tmp_path):
    import contextlib
    import subprocess
    import sys

    import yaml

    from platypus_ray.core.outputs import replaced_atomically

    # The signal goes once an embedding actor runs; a run that finished first (a fast box: exit 0, its
    # new output written, which is right) is tried again on a corpus four times larger. The largest
    # run takes any of the pipeline's Ray Data work as mid-run; a failure names the processes seen.
    seen: set[str] = set()
    sizes = (800, 3200, 12800)
    for rows in sizes:
        marks = (EMBED_ACTOR,) if rows < sizes[-1] else (EMBED_ACTOR, *PIPELINE_WORK)
        corpus, output = tmp_path / f"corpus-{rows}.jsonl", tmp_path / f"out-{rows}"
        write_corpus(corpus, rows)
        with replaced_atomically(str(output), "refine") as staging:  # an earlier run's output
            (staging / "stats.json").write_text("old")
        raw = config(corpus, output).model_dump(mode="json", exclude_unset=True)
        (tmp_path / "refine.yaml").write_text(yaml.safe_dump(raw))
        command = [sys.executable, "-m", "platypus_ray", "refine", "--config", str(tmp_path / "refine.yaml")]
        # A user's Ctrl-C reaches a CLI whose SIGINT is at its default. A library earlier in this pytest
        # process can leave SIGINT ignored, which a child inherits, and Python then installs no handler
        # (seen in a full suite: the runs took the signal and finished). A Python handler here becomes
        # the default in the child.
        inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        finally:
            signal.signal(signal.SIGINT, inherited)
        deadline, started = time.time() + 240, False
        while not started and time.time() < deadline and proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    seen.update(child.cmdline()[:1])
                    started = started or any(part.startswith(marks) for part in child.cmdline()[:1])
            time.sleep(0.2)
        if started:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
        if proc.returncode == 0:  # finished first: its output is the new run's, whole
            assert json.loads((output / "stats.json").read_text())["input_rows"] == rows
            continue
        assert started, "no embedding actor started (the run ended first?)"
        break
    else:
        pytest.fail(f"every run finished before the signal reached it; its processes: {sorted(seen)}")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    assert [line for line in err.splitlines() if "interrupted" in line] == [
        "platypus-ray refine: interrupted; the old output is intact"
    ]
    assert (output / "stats.json").read_text() == "old"
