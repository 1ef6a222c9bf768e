"""``platypus-ray <command> --config FILE [--set key.sub=value ...]``: parse, validate, run the stage.

Nothing stage-specific lives here: each command is a config class plus a
:class:`~platypus_ray.core.stage.Stage`, whose ``run`` is its preflight, then its work.
Some commands accept a few ``--key VALUE`` flags as shorthand for ``--set key=VALUE``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from platypus_ray.core import console, log
from platypus_ray.core.config import load_config
from platypus_ray.core.errors import environment_failure, find_user_error
from platypus_ray.core.stage import Stage

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pydantic import BaseModel


@dataclass(frozen=True)
class Command:
    help: str
    config: str  # "module:ConfigClass": imported first, so a config error shows before Ray loads
    stage: str  # "module:STAGE": the Stage whose run (preflight, then the work) the command calls
    flags: tuple[str, ...] = ()  # --flag VALUE shorthands for top-level keys
    switches: tuple[str, ...] = ()  # --some-switch shorthands for top-level booleans (some_switch=true)
    interrupted: str = "the old output is intact"  # what Ctrl-C leaves behind (outputs are replaced whole)

    def config_class(self) -> type[BaseModel]:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)

    def load_stage(self) -> Stage:
        module, name = self.stage.split(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "refine": Command(
        "curate instruction data: validate, dedup, decontaminate (Ray Data)",
        "platypus_ray.refine.config:RefineConfig",
        "platypus_ray.refine.stage:STAGE",
        switches=("allow_empty_benchmark",),
    ),
    "train": Command(
        "LoRA fine-tune with DeepSpeed ZeRO-3 on Ray Train",
        "platypus_ray.train.config:TrainConfig",
        "platypus_ray.train.stage:STAGE",
        interrupted="a rerun with the same run.name resumes from its last checkpoint",
    ),
    "sweep": Command(
        "Ray Tune over LoRA rank / target modules / learning rate (ASHA)",
        "platypus_ray.sweep.config:SweepConfig",
        "platypus_ray.sweep.stage:STAGE",
        switches=("resume",),
        interrupted="--resume continues the sweep",
    ),
    "merge": Command(
        "fold a LoRA adapter into a base model",
        "platypus_ray.merge:MergeConfig",
        "platypus_ray.merge:STAGE",
        flags=("base", "adapter", "out"),
    ),
    "evaluate": Command(
        "benchmark accuracy (acc, acc_norm) and held-out loss, as Ray Data batch inference",
        "platypus_ray.evaluate.config:EvaluateConfig",
        "platypus_ray.evaluate.stage:STAGE",
    ),
    "pipeline": Command(
        "refine -> train -> merge -> evaluate in one run, each stage feeding the next",
        "platypus_ray.pipeline:PipelineConfig",
        "platypus_ray.pipeline:STAGE",
        interrupted="the stages that finished kept their outputs; the interrupted one's old output is intact",
    ),
    "make-tiny-model": Command(
        "build a tiny LLaMA + locally trained tokenizer (tests, demo)",
        "platypus_ray.devtools.tiny_model:TinyModelConfig",
        "platypus_ray.devtools.tiny_model:STAGE",
        flags=("out",),
    ),
    "distill-embedder": Command(
        "distil a model2vec static embedder from a local sentence-transformers model (offline)",
        "platypus_ray.embedding.distill:DistillConfig",
        "platypus_ray.embedding.distill:STAGE",
        flags=("model", "out"),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="platypus-ray", description="The Platypus recipe on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        sub.add_argument("--config", "-c", help="YAML config file")
        sub.add_argument(
            "--verbose",
            "-v",
            action="store_true",
            help="show library output (deprecation warnings, Ray Train's report dumps, DeepSpeed "
            "builds) on the console instead of in <outputs>/logs/",
        )
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set dedup.threshold=0.85 (repeatable)",
        )
        for flag in command.flags:
            sub.add_argument(f"--{flag}", dest=f"flag_{flag}", metavar=flag.upper(), help=f"same as --set {flag}=...")
        for switch in command.switches:
            sub.add_argument(
                f"--{switch.replace('_', '-')}",
                dest=f"switch_{switch}",
                action="store_true",
                help=f"same as --set {switch}=true",
            )
    return parser


def _stop_local_ray() -> None:
    """Stop the local Ray instance a stage started (commands that never used Ray import none)."""
    runtime = sys.modules.get("platypus_ray.core.runtime")
    if runtime is not None:
        runtime.stop_local_ray()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    overrides = list(args.overrides)
    for flag in command.flags:
        value = getattr(args, f"flag_{flag}")
        if value is not None:
            overrides.append(f"{flag}={value}")
    overrides += [f"{switch}=true" for switch in command.switches if getattr(args, f"switch_{switch}")]
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    log.setup()
    if not args.verbose:
        console.install()  # before the stage's imports: Ray and DeepSpeed may log as they load
    try:
        cfg = load_config(command.config_class(), args.config, overrides)
        console.use_log_dir(console.log_folder(cfg), args.command)
        result = command.load_stage().run(cfg)
    except Exception as exc:  # user mistakes get one clear line, anything else a traceback
        user_error = find_user_error(exc) or environment_failure(exc)
        if user_error is None:
            raise
        logger.error("platypus-ray %s: error: %s", args.command, user_error)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, the shell's code for SIGINT
        logger.error("platypus-ray %s: interrupted; %s", args.command, command.interrupted)
        return 130
    finally:
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: Ray's exit hook stops it instead
            _stop_local_ray()
    logger.info("%s", result.summary())
    note = console.routed_note()
    if note:
        logger.info("%s", note)
    return 0
