"""The ledger's invariants are real checks: they hold under ``python -O``, which strips asserts."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_removing_a_row_twice_fails_even_under_python_dash_O():
    script = textwrap.dedent(
        """
        import numpy as np
        from platypus_ray.core.errors import InvariantError
        from platypus_ray.refine.ledger import Decisions

        meta = {
            "source": np.array(["s", "s", "s"]),
            "valid": np.array([True, True, True]),
            "reason": np.array(["", "", ""]),
            "detail": np.array(["", "", ""]),
            "id": np.array(["a", "b", "c"]),
        }
        decisions = Decisions.start(meta)
        decisions.remove(np.array([1]), "near_duplicate", matched=np.array([0]), score=0.9)
        try:
            decisions.remove(np.array([1]), "near_duplicate", matched=np.array([2]), score=0.9)
        except InvariantError as exc:
            print("refused:", exc)
        """
    )
    proc = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: a row is removed at most once" in proc.stdout
