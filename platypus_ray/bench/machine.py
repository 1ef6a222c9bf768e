"""What machine a benchmark ran on: its numbers are reported with it (AVX2 and AVX-512 boxes differ 2-5x)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance(module: str, argv: list[str] | None = None) -> dict:
    """Where a measurement comes from, for its JSON record (docs/benchmarks/*.json): the command
    that produced it, the CPU, the date (UTC) and the load average when it started."""
    return {
        "command": shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
