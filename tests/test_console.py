"""The console filter on real demo output: the project's lines print, known library noise goes to
the log, and anything that looks like a real problem prints even inside a noise block. No Ray."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from platypus_ray.core import console
from platypus_ray.core.console import NoiseLog, RoutedStream

# Lines from a `make demo` run before this filter existed (driver and forwarded worker output),
# less PEFT's "trainable params" line: the worker no longer prints it (the train plan has the count).
EXCERPT = Path(__file__).with_name("demo_console_excerpt.txt").read_text()


def route(text: str, chunks: int = 1) -> tuple[str, list[str], NoiseLog]:
    """Feed ``text`` through a routed stream (in ``chunks`` pieces, as print() writes), return
    what reached the console and what went to the log."""
    target, log = io.StringIO(), NoiseLog()
    stream = RoutedStream(target, log)
    size = -(-len(text) // chunks)
    for start in range(0, len(text), size):
        stream.write(text[start : start + size])
    stream.flush()
    return target.getvalue(), log._held, log


def test_the_demo_excerpt_keeps_exactly_the_projects_lines():
    shown, routed, _ = route(EXCERPT, chunks=7)  # lines split across writes are still judged whole
    kept = shown.splitlines()
    assert [line for line in kept if "[train] step" in line] == [
        line for line in EXCERPT.splitlines() if "[train] step" in line
    ]
    assert [line for line in kept if not line.startswith("\x1b[36m(")] == [
        line
        for line in EXCERPT.splitlines()
        if line.startswith(("refine:", "  ", "train:")) and "warnings.warn" not in line
    ]
    for noise in (
        "FutureWarning",
        "DeprecationWarning",
        "TrainingReport(",
        "warnings.warn",
        "built successfully",
        "Progress bars disabled",
        "Token authentication is enabled",
        "constructor arguments",
        "Setting accelerator to CPU",
        "exclude_resources",
    ):
        assert noise not in shown, noise
        assert any(noise in line for line in routed), noise
    assert len(kept) + len(routed) == len(EXCERPT.splitlines())  # nothing lost


@pytest.mark.parametrize(
    "line",
    [
        "(RayTrainWorker pid=1) [train] step 7/30 loss nan grad_norm nan learning_rate 0.004",
        "(RayTrainWorker pid=1) Reporting training result 2: TrainingReport(metrics={'loss': nan})",
        "(RayTrainWorker pid=1) torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "(TrainController pid=2) ray.exceptions.ActorDiedError: The actor died unexpectedly",
        "(RayTrainWorker pid=1) Traceback (most recent call last):",
        "tracking: warning: logging to MLflow failed (OSError: disk full); training continues",
    ],
)
def test_a_real_problem_prints_even_inside_a_noise_block(line):
    header = "(RayTrainWorker pid=1) /x/transformers/y.py:3: FutureWarning: `a` is deprecated\n"
    shown, routed, _ = route(header + line + "\n")
    assert shown == line + "\n" and routed == [header.rstrip("\n")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_tty_a_progress_bar_redraw_is_not_held_for_a_newline():
    target, log = Terminal(), NoiseLog()
    stream = RoutedStream(target, log)
    stream.write("\rRunning 3/10")
    assert target.getvalue() == "\rRunning 3/10"
    stream.write("\x1b[36m(pid=1)\x1b[0m colours only")  # a colour code is no redraw: held for its line
    assert target.getvalue() == "\rRunning 3/10"
    stream.write("\n")
    assert target.getvalue().endswith("colours only\n")


def test_on_a_non_tty_tqdm_redraws_go_to_the_log():
    target, log = io.StringIO(), NoiseLog()
    stream = RoutedStream(target, log)
    for redraw in (
        "\rGenerating test split: 0 examples [00:00, ? examples/s]",
        "\rGenerating test split: 12 examples [00:00, 6129.78 examples/s]",
        "\n",
        "\r  0%|          | 0/12 [00:00<?, ?it/s]",
        "\r100%|##########| 12/12 [00:00<00:00, 650.50it/s]",
        "\n",
        "evaluate: fine-tuned vs base (70 s)\n",
        "no newline yet",
    ):
        stream.write(redraw)
        stream.flush()  # tqdm flushes after every redraw: a half line must wait for its end
    assert target.getvalue() == "evaluate: fine-tuned vs base (70 s)\n" and len(log._held) == 4
    stream.write_partial()  # at exit
    assert target.getvalue().endswith("(70 s)\nno newline yet\n")


def test_the_log_is_written_once_its_folder_is_known(tmp_path):
    _, _, log = route("/x/y.py:1: DeprecationWarning: old\n  old()\n")
    assert log.lines == 2 and not list(tmp_path.iterdir())
    log.use(str(tmp_path / "logs" / "train.log"))
    log.write(["(pid=1) Reporting training result 1: TrainingReport()"])
    assert (tmp_path / "logs" / "train.log").read_text().splitlines() == [
        "/x/y.py:1: DeprecationWarning: old",
        "  old()",
        "(pid=1) Reporting training result 1: TrainingReport()",
    ]


def test_logs_sit_beside_replaced_outputs_and_inside_a_storage_folder(tmp_path):
    from platypus_ray.core.config import load_config
    from platypus_ray.devtools.tiny_model import TinyModelConfig
    from platypus_ray.pipeline import PipelineConfig
    from platypus_ray.train.config import TrainConfig

    root = Path(__file__).parents[1]
    assert console.log_folder(TinyModelConfig(out=str(tmp_path / "model"))) == str(tmp_path)
    demo = load_config(PipelineConfig, str(root / "jobs/configs/demo.yaml"), [])  # out/demo/{refine,train,merged,eval}
    assert console.log_folder(demo) == str(Path("out/demo").resolve())
    # a clean clone has no out/demo/refine/kept nor out/tiny-llama: point the inputs at folders that exist
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text("{}")
    overrides = [f"run.storage_path={tmp_path}/runs", f"data.path={tmp_path}", f"model.name_or_path={tmp_path}/llm"]
    train = load_config(TrainConfig, str(root / "jobs/configs/tiny-cpu.yaml"), overrides)
    assert console.log_folder(train) == f"{tmp_path}/runs"  # a storage folder of many runs holds its logs


def test_the_cli_routes_deepspeeds_cpu_notice_to_the_log(tmp_path):
    command = [
        sys.executable,
        "-m",
        "platypus_ray",
        "make-tiny-model",
        "--out",
        str(tmp_path / "model"),
        "--set",
        "pretrain_steps=2",
    ]
    # DeepSpeed says it only while choosing the accelerator itself: an earlier in-process test may
    # have set DS_ACCELERATOR in this process (core/devices.py), which the child would inherit
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    console_text = done.stdout + done.stderr
    assert "Setting accelerator to CPU" not in console_text and "make-tiny-model: saved" in console_text
    log = tmp_path / "logs" / "make-tiny-model.log"
    assert "Setting accelerator to CPU" in log.read_text()  # DeepSpeed said it: `--verbose` would show it
    assert f"of library output in {log}; --verbose shows them here" in done.stdout


def test_verbose_routes_nothing_and_a_config_error_is_still_one_line(monkeypatch, capsys):
    from platypus_ray.cli import main

    def must_not_route():
        raise AssertionError("--verbose must leave the console alone")

    monkeypatch.setattr(console, "install", must_not_route)
    assert main(["make-tiny-model", "--verbose", "--set", "no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("platypus-ray make-tiny-model: error: ") and "no_such_key" in err


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    from platypus_ray import cli

    class Interrupted:
        def run(self, cfg):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.Command, "load_stage", lambda self: Interrupted())
    assert cli.main(["make-tiny-model", "--verbose", "--out", str(tmp_path / "model")]) == 130
    out, err = capsys.readouterr()
    assert err == "platypus-ray make-tiny-model: interrupted; the old output is intact\n" and out == ""


def test_the_raylets_worker_count_note_goes_to_the_log():
    note = (
        "\x1b[33m(raylet)\x1b[0m WARNING: 16 PYTHON worker processes have been started on node: abc with address: "
        "127.0.0.1, which is 8x the maximum expected startup concurrency (2). This could be a result of using a large "
        "number of actors, tasks blocked in ray.get() calls, or tasks with fractional CPU requests.\n"
    )
    shown, routed, _ = route(note)
    assert shown == "" and routed == [note.rstrip("\n")]
