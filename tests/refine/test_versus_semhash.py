"""`platypus-ray refine` as a process against SemHash and the brute-force rule on perturbed real text."""

from __future__ import annotations

import json

import pytest

from platypus_ray.bench.versus_semhash import run_versus
from platypus_ray.samples import sample_rows


@pytest.mark.timeout(600)
def test_a_refine_process_keeps_the_brute_force_set_of_perturbed_rows(tmp_path):
    """The shipped sample rows, then perturbed copies (a word dropped, swapped or added, the case
    changed) to 2,400 rows: the kept set of a whole refine process (static encoder, auto mode) is the
    brute-force greedy set row for row; SemHash runs on the same file with the same model."""
    source = tmp_path / "sample.json"
    source.write_text(json.dumps([{k: r[k] for k in ("instruction", "input", "output")} for r in sample_rows()]))
    result = run_versus(source, 2400, 0.8, tmp_path / "versus.json")
    assert result["refine"]["dedup_mode"] == "kept"
    assert result["refine"]["kept_differs"] == 0 and result["refine"]["kept"] == result["brute_force_kept"]
    assert 50 < result["brute_force_kept"] < 1000  # near-duplicates were there to remove
    assert result["semhash"]["kept"] > 0 and result["semhash_wall_s"] > 0 and result["speed_vs_semhash"] > 0
    assert result["embed"]["ratio"] > 0 and result["refine"]["read_validate_rows_per_s"] > 0
    assert json.loads((tmp_path / "versus.json").read_text())["versus_semhash"]["rows"] == 2400
