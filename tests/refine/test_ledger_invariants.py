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


def test_the_decisions_hold_numbers_per_row_and_the_ledger_joins_names_back():
    """Per row the driver keeps codes and numbers (no Python string per row); the write tasks'
    join gives back the names, ids and positions the ledger shows."""
    import dataclasses

    import numpy as np
    import pyarrow as pa
    import pytest

    from platypus_ray.core.errors import InvariantError
    from platypus_ray.refine.ledger import Decisions, IdLookup

    meta = {
        "source": np.array(["a", "a", "b", "b", "b"]),
        "valid": np.array([True, True, True, False, True]),
        "reason": np.array(["", "", "", "bad_json", ""]),
    }
    decisions = Decisions.start(meta)
    decisions.remove(np.array([1, 4]), "near_duplicate", matched=np.array([0, 2]), score=np.array([0.9, 0.8]))
    decisions.flag(2, remove=False, item_id="q:7", benchmark="q", category="gray_area", signal="ngram", score=0.6)
    decisions.details[4] = "set on the driver"
    per_row = [f.name for f in dataclasses.fields(decisions) if isinstance(getattr(decisions, f.name), np.ndarray)]
    assert per_row and all(getattr(decisions, name).dtype != object for name in per_row)

    ids = IdLookup(decisions.matched_uids(), pa.array(["id-0", "id-2"]))
    rows = decisions.columns(ids).rows(np.arange(5), np.arange(5), ["", "", "", "line 4: not JSON", ""])
    assert rows["status"] == ["kept", "removed", "kept", "invalid", "removed"]
    assert rows["reason"] == ["", "near_duplicate", "", "bad_json", "near_duplicate"]
    assert rows["matched_id"] == ["", "id-0", "q:7", "", "id-2"]
    assert rows["matched_source"] == ["", "a", "", "", "b"]
    assert rows["matched_source_index"].tolist() == [-1, 0, -1, -1, 0]
    assert rows["source_index"].tolist() == [0, 1, 0, 1, 2]
    assert rows["detail"] == ["", "", "", "line 4: not JSON", "set on the driver"]
    assert rows["category"] == ["", "", "gray_area", "", ""] and rows["signal"][2] == "ngram"
    with pytest.raises(InvariantError, match="not fetched"):
        IdLookup(np.array([0]), pa.array(["id-0"]))(np.array([2]))


def test_top_scores_is_a_stable_argsort_of_the_highest():
    """top_scores against ``argsort(-score, kind="stable")[:k]`` on random scores with many ties."""
    import numpy as np

    from platypus_ray.refine.ledger import top_scores

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, k = int(rng.integers(0, 60)), int(rng.integers(1, 25))
        score = rng.integers(0, 6, n) / 5.0  # few distinct values: ties at the k-th score
        assert top_scores(score, k).tolist() == np.argsort(-score, kind="stable")[:k].tolist()
