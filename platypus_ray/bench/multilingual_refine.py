"""Calibrate the contamination signals through refine itself: its probes, windows, categories and ledger.

    python -m platypus_ray.bench.multilingual --refine [--json docs/benchmarks/multilingual-refine.json]

The whole-text cosines of ``bench.multilingual`` are not what refine compares: refine embeds long
benchmark items as windows too and keeps a row's best probe. Here refine runs on the dev set:
benchmarks = the English GNOME help paragraphs (a ``questions`` file) + the MMLU test files;
one source = the Alpaca sample with the paragraphs' Chinese translations hidden among its rows
(7.6% of the source: a minority, so the run stays on the default model and the multilingual
signal is a second signal, as on a mostly English corpus). Three runs share one embedding cache:

* ``minilm``: the default model's signal at its defaults (``contamination.threshold`` is not
  re-chosen here, so English paraphrase recall cannot move), the multilingual signal off;
* ``sweep``: the multilingual signal alone (the default model's thresholds at 1.0) with every
  category threshold at ``FLOOR`` and 1.0, every category removed, so the ledger holds its best
  score for every row above ``FLOOR`` (a flagged row that stays goes on to semantic dedup, whose
  removal would overwrite the ledger's score and match); the flag threshold is chosen on the dev
  half of the pairs (the highest recall with both signals together flagging at most ``--budget``
  of the Alpaca rows) and reported on the other half;
* ``defaults``: ``RefineConfig``'s own defaults, read from the ledger as a user would.

Then the change on the plain Alpaca sample against MMLU alone (no translations, no GNOME items),
``before`` (the multilingual signal off) and ``after`` (the defaults): rows flagged and removed,
and the rows the multilingual signal adds, to be read by a person (true leak or topic neighbour).

Every flagged Alpaca row counts as a false flag: none of them is a translated test item.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FLOOR = 0.45  # the sweep's lowest multilingual threshold: below every candidate
ALL = ["duplicate", "gray_area", "similar_but_different"]
CANDIDATES = [round(t, 2) for t in np.arange(0.50, 0.801, 0.01)]


def write_dev_set(work: Path, pairs: list[tuple[str, str]], alpaca: list[dict]) -> tuple[dict[str, Any], list[str]]:
    """The benchmark file, the source (translations at seeded places among the Alpaca rows), the config's
    paths, and what each source row is (``alpaca-<i>``, ``zh-<pair>``: refine's ids are content hashes)."""
    from platypus_ray.bench.translations import SHARED

    gnome = work / "gnome-help.jsonl"
    with gnome.open("w", encoding="utf-8") as out:
        for n, (english, _) in enumerate(pairs):
            out.write(json.dumps({"id": f"gnome-{n}", "question": english}, ensure_ascii=False) + "\n")
    rows = [(f"alpaca-{i}", r) for i, r in enumerate(alpaca)]
    places = random.Random(37).sample(range(len(rows) + len(pairs)), len(pairs))
    hidden = iter((f"zh-{n}", {"instruction": z, "input": "", "output": "好的。"}) for n, (_, z) in enumerate(pairs))
    for place in sorted(places):
        rows.insert(place, next(hidden))
    source = work / "source" / "rows.json"
    source.parent.mkdir(exist_ok=True)
    source.write_text(json.dumps([r for _, r in rows], ensure_ascii=False))
    return {
        "sources": [{"path": str(source)}],
        "benchmarks": [
            {"path": str(gnome), "format": "questions", "name": "gnome-help"},
            {"path": str(SHARED / "benchmarks" / "mmlu"), "format": "mmlu_csv", "name": "mmlu"},
        ],
    }, [label for label, _ in rows]


def refine_ledger(work: Path, name: str, base: dict, contamination: dict, labels: list[str]) -> pd.DataFrame:
    """One refine run (outputs under ``work/name``, the cache shared by the runs); its ledger, by row label."""
    from platypus_ray.refine.config import RefineConfig
    from platypus_ray.refine.stage import run

    cfg = RefineConfig.model_validate({**base, "output": str(work / name), "contamination": contamination})
    result = run(cfg)
    ledger = pd.read_parquet(work / name / "ledger").sort_values("source_index")
    ledger.index = pd.Index([labels[i] for i in ledger["source_index"]])
    ledger.attrs["signals"] = result.stats.get("contamination_signals", {})
    ledger.attrs["timings_s"] = result.timings_s
    return ledger


def _has(ledger: pd.DataFrame, signal: str) -> pd.Series:
    return ledger["signal"].fillna("").str.split("+").apply(lambda names: signal in names)


def summarize_flags(ids: pd.Index, flagged: pd.Series, removed: pd.Series, dev: pd.Series) -> dict:
    """Recall on the translations (test and dev halves), false flags and removals on the Alpaca rows."""
    zh, alpaca = ids.str.startswith("zh-"), ids.str.startswith("alpaca-")
    test = zh & ~dev.reindex(ids, fill_value=False).to_numpy()
    dev_rows = zh & dev.reindex(ids, fill_value=False).to_numpy()
    return {
        "recall_test": round(float(flagged[test].mean()), 4),
        "recall_dev": round(float(flagged[dev_rows].mean()), 4),
        "removal_recall_test": round(float(removed[test].mean()), 4),
        "alpaca_false_flags": int(flagged[alpaca].sum()),
        "alpaca_false_flag_rate": round(float(flagged[alpaca].mean()), 5),
        "alpaca_false_removals": int(removed[alpaca].sum()),
    }


def sweep_table(minilm: pd.DataFrame, sweep: pd.DataFrame, dev: pd.Series) -> list[dict]:
    """Per candidate multilingual threshold: that signal alone and together with the default model's."""
    ids = minilm.index
    minilm_flag = _has(minilm, "embedding").reindex(ids).to_numpy()
    ml_score = sweep["score"].where(_has(sweep, "multilingual")).reindex(ids).fillna(0.0).to_numpy()
    table = []
    for t in CANDIDATES:
        ml = pd.Series(ml_score >= t, index=ids)
        both = pd.Series(minilm_flag | ml.to_numpy(), index=ids)
        table.append(
            {
                "threshold": t,
                "multilingual": summarize_flags(ids, ml, ml, dev),
                "both": summarize_flags(ids, both, both, dev),
            }
        )
    return table


def choose(table: list[dict], budget: float) -> dict:
    """The lowest candidate (highest recall) whose dev recall is counted with both signals flagging
    at most ``budget`` of the Alpaca rows."""
    fits = [row for row in table if row["both"]["alpaca_false_flag_rate"] <= budget]
    return fits[0] if fits else table[-1]


def read_run(ledger: pd.DataFrame, dev: pd.Series) -> dict:
    """Per signal and together, from a run's ledger: flags (any category) and removals."""
    ids = ledger.index
    removed = pd.Series((ledger["reason"] == "contaminated").to_numpy(), index=ids)
    flagged = ledger["category"].fillna("") != ""
    out: dict[str, Any] = {"both": summarize_flags(ids, flagged, removed, dev)}
    for signal in ("embedding", "multilingual", "ngram"):
        mine = _has(ledger, signal)
        out[signal] = summarize_flags(ids, mine, removed & mine, dev)
    alpaca = ledger[ids.str.startswith("alpaca-") & flagged.to_numpy()]
    out["alpaca_flagged_rows"] = [
        {
            "id": i,
            "score": round(float(r.score), 3),
            "signal": r.signal,
            "category": r.category,
            "removed": r.reason == "contaminated",
            "matched": r.matched_id,
        }
        for i, r in alpaca.sort_values("score", ascending=False).iterrows()
    ]
    return out


def run_refine_calibration(budget: float, keep: Path | None = None) -> dict | None:
    """The three runs and the table (``keep``: leave the outputs there instead of a temporary folder)."""
    from platypus_ray.bench.machine import cpu_model
    from platypus_ray.bench.translations import SHARED, ensure_docs, in_dev, translation_pairs
    from platypus_ray.refine.config import ContaminationConfig

    if not ensure_docs():
        return None
    pairs = translation_pairs()
    alpaca = json.loads((SHARED / "alpaca_5000.json").read_text())
    dev = pd.Series({f"zh-{n}": in_dev(e) for n, (e, _) in enumerate(pairs)})
    with tempfile.TemporaryDirectory() as scratch:
        work = keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        base, labels = write_dev_set(work, pairs, alpaca)
        off = {"multilingual": {"enabled": False}}
        minilm = refine_ledger(work, "minilm", base, off, labels)
        only_ml = {"threshold": 1.0, "gray_area_threshold": 1.0, "duplicate_threshold": 1.0}
        ml = {
            "enabled": True,
            "threshold": FLOOR,
            "gray_area_threshold": 1.0,
            "duplicate_threshold": 1.0,
            "remove": ALL,
        }
        sweep = refine_ledger(work, "sweep", base, {**only_ml, "multilingual": ml}, labels)
        defaults = refine_ledger(work, "defaults", base, ContaminationConfig().model_dump(), labels)
        mmlu = {"sources": [{"path": str(SHARED / "alpaca_5000.json")}], "benchmarks": base["benchmarks"][1:]}
        plain = [f"alpaca-{i}" for i in range(len(alpaca))]
        before = refine_ledger(work, "before", mmlu, off, plain)
        after = refine_ledger(work, "after", mmlu, ContaminationConfig().model_dump(), plain)
    table = sweep_table(minilm, sweep, dev)
    signal = ContaminationConfig().multilingual
    return {
        "cpu": cpu_model(),
        "pairs": len(pairs),
        "dev_pairs": int(dev.sum()),
        "test_pairs": int((~dev).sum()),
        "alpaca_rows": len(alpaca),
        "budget": budget,
        "chosen_on_dev": choose(table, budget),
        "defaults": {
            "embedding": [ContaminationConfig().threshold, ContaminationConfig().gray_area_threshold],
            "multilingual": None if signal is None else signal.model_dump(),
            "result": read_run(defaults, dev),
            "timings_s": defaults.attrs["timings_s"],
        },
        "minilm_only": read_run(minilm, dev),
        "alpaca_vs_mmlu": before_after(before, after, alpaca),
        "sweep": table,
        "sweep_score_percentiles": _percentiles(sweep, minilm.index),
    }


def _percentiles(sweep: pd.DataFrame, ids: pd.Index) -> dict:
    """The multilingual signal's best score on the translations and on the Alpaca rows (0 below FLOOR)."""
    score = sweep["score"].where(_has(sweep, "multilingual")).reindex(ids).fillna(0.0)
    zh, alpaca = score[ids.str.startswith("zh-")], score[ids.str.startswith("alpaca-")]
    return {
        "translated": {p: round(float(np.percentile(zh, p)), 3) for p in (5, 10, 25, 50, 75, 90)},
        "alpaca": {p: round(float(np.percentile(alpaca, p)), 3) for p in (99, 99.8, 99.9, 100)},
    }


def before_after(before: pd.DataFrame, after: pd.DataFrame, alpaca: list[dict]) -> dict:
    """Alpaca against MMLU with the multilingual signal off and on: counts, and each row it adds with its text."""

    def counts(ledger: pd.DataFrame) -> dict:
        flagged = ledger["category"].fillna("") != ""
        return {"flagged": int(flagged.sum()), "removed": int((ledger["reason"] == "contaminated").sum())}

    was = before["category"].fillna("") != ""
    added = after[(after["category"].fillna("") != "") & ~was.reindex(after.index, fill_value=False)]
    return {
        "before": counts(before),
        "after": counts(after),
        "after_signals": after.attrs["signals"],
        "added_rows": [
            {
                "row": int(r.source_index),
                "score": round(float(r.score), 3),
                "signal": r.signal,
                "category": r.category,
                "removed": r.reason == "contaminated",
                "matched": r.matched_id,
                "text": " ".join(
                    f"{alpaca[int(r.source_index)]['instruction']} {alpaca[int(r.source_index)]['input']}".split()
                )[:200],
            }
            for _, r in added.sort_values("score", ascending=False).iterrows()
        ],
    }
