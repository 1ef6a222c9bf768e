"""Output folders that are replaced whole: a rerun never leaves a mix of old and new files."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from platypus_ray.errors import UserError
from platypus_ray.paths import is_remote


@contextmanager
def replaced_atomically(output: str) -> Iterator[Path]:
    """Yield a staging folder beside ``output``; on success it takes ``output``'s place.

    The swap is two renames on the same filesystem (old aside, new in), so a reader sees
    either the complete old output or the complete new one. On failure the staging folder
    is removed and the old output stays untouched.
    """
    if is_remote(output):
        raise UserError(
            f"output: '{output}' is remote; refine writes a local or shared-filesystem folder "
            "(mount the bucket, or copy the folder afterwards)"
        )
    target = Path(output).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
