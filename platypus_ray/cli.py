"""``platypus-ray <stage> --config FILE [--set key.sub=value ...]``: parse, validate, call the stage.

Nothing stage-specific lives here: each stage is a config model plus a ``run(cfg)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from platypus_ray.config import load_config
from platypus_ray.errors import find_user_error

# stage -> (help, module exposing ``run(cfg)``, name of its config class in that module)
STAGES: dict[str, tuple[str, str, str]] = {
    "refine": ("curate instruction data: validate, dedup, decontaminate (Ray Data)", "platypus_ray.refine", "RefineConfig"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="platypus-ray", description="The Platypus recipe on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _, _) in STAGES.items():
        stage = commands.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--config", "-c", help="YAML config file")
        stage.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config key, e.g. --set dedup.threshold=0.85 (repeatable)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, module_name, config_name = STAGES[args.command]
    module = importlib.import_module(module_name)
    try:
        cfg = load_config(getattr(module, config_name), args.config, args.overrides)
        result = module.run(cfg)
    except Exception as exc:  # user mistakes get one clear line, anything else a traceback
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        print(f"platypus-ray {args.command}: error: {user_error}", file=sys.stderr)
        return 2
    summary: Callable[[], str] | None = getattr(result, "summary", None)
    if summary is not None:
        print(summary())
    return 0
