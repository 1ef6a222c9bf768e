"""Semantic dedup judged on real text: perturbed copies of the Alpaca sample, the static encoder,
each mode against a brute-force exact reference and against SemHash on the same vectors.

    python -m platypus_ray.bench.refine --scale 100000 --text --json out/dedup-text.json

The rows are built as ``bench.refine --e2e`` builds them (each Alpaca row copied with a word
dropped, swapped or added, or its case changed), collapsed by refine's exact-duplicate key, and
embedded once with the project's ``static`` backend (model2vec distilled from MiniLM). Per mode:
kept rows, **kept-set difference vs exact** (rows kept by one and not the other, as a share of
exact's kept set), pair recall with no exclusions (pairs a neighbour bound drops count as misses),
wall seconds and driver peak RSS. SemHash (``pip install semhash``, optional) runs
``self_deduplicate`` on the same texts with the same model in the same run.
"""

from __future__ import annotations

import random
import resource
import time
from pathlib import Path

import numpy as np


def perturbed_texts(source: Path, rows: int, seed: int = 0) -> list[str]:
    """``rows`` texts: the source's rows, then perturbed copies, distinct by refine's exact key."""
    import json

    from platypus_ray.bench.refine_e2e import perturb
    from platypus_ray.refine.rows import embed_text, normalize

    base = [embed_text(r["instruction"], r.get("input") or "") for r in json.loads(source.read_text())]
    rng = random.Random(seed)
    texts = [base[i % len(base)] if i < len(base) else perturb(base[i % len(base)], rng) for i in range(rows)]
    seen: dict[str, str] = {}
    for text in texts:
        seen.setdefault(normalize(text), text)
    return list(seen.values())


def sparse_texts(source: Path) -> list[str]:
    """Distinct texts with few near-duplicates: the Alpaca rows (instruction + input), their outputs
    split into sentences, and the MMLU questions (passages split into sentences) and answer choices
    beside the sample; sentences of fewer than 4 words are left out. Distinct by refine's exact key."""
    import csv
    import json
    import re

    from platypus_ray.refine.rows import embed_text, normalize

    sentence_end = re.compile(r"(?<=[.!?])\s+")
    texts: list[str] = []
    for row in json.loads(source.read_text()):
        texts.append(embed_text(row["instruction"], row.get("input") or ""))
        texts += sentence_end.split(row["output"])
    for path in sorted((source.parent / "benchmarks" / "mmlu").glob("*_test.csv")):
        with path.open(newline="") as handle:
            for question, *choices in csv.reader(handle):
                texts += sentence_end.split(question) + choices[:4]
    seen: dict[str, str] = {}
    for text in texts:
        if len(text.split()) >= 4:
            seen.setdefault(normalize(text), text)
    return list(seen.values())


def _kept_difference(keep: np.ndarray, exact: np.ndarray) -> dict:
    differ = int((keep != exact).sum())
    return {
        "kept": int(keep.sum()),
        "kept_differs": differ,
        "kept_difference": round(differ / max(int(exact.sum()), 1), 5),
    }


# kept: the walk against the kept set finds each removed row's kept match, not every pair (its pair
# recall is the share of pairs that have a kept row in them); exact and clustered enumerate pairs.
MODES = ("kept", "exact", "clustered")
STAT_KEYS = ("why", "dot_products", "kept_check_rounds", "kept_check_pairs_added")


def run_text(source: Path, rows: int, threshold: float = 0.8, semhash: bool = True, sparse: bool = False) -> dict:
    """The table's numbers for ``rows`` perturbed rows, or for the sparse set (Ray already up)."""
    from platypus_ray.devtools.dedup_reference import greedy_reference
    from platypus_ray.embedding.encoders import EncoderSpec, load_encoder
    from platypus_ray.refine.config import DedupConfig
    from platypus_ray.refine.dedup import dedup_rows
    from platypus_ray.refine.dedup.similarity import all_pairs_above, pair_keys

    texts = sparse_texts(source) if sparse else perturbed_texts(source, rows)
    encoder = load_encoder(EncoderSpec("all-MiniLM-L6-v2", "static", device="cpu", batch_size=1024))
    start = time.perf_counter()
    emb = encoder.encode(texts).astype(np.float32)
    result: dict = {
        "data": "sparse" if sparse else "perturbed",
        "rows": len(texts) if sparse else rows,
        "distinct_texts": len(texts),
        "dim": int(emb.shape[1]),
        "encode_s": round(time.perf_counter() - start, 2),
    }
    n = len(texts)
    order = np.arange(n)  # keep: first
    start = time.perf_counter()
    exact = greedy_reference(emb, order, threshold)
    result["brute_force"] = {"kept": int(exact.sum()), "wall_s": round(time.perf_counter() - start, 2)}
    truth = all_pairs_above(emb, threshold, 2048)
    truth_keys = np.unique(pair_keys(truth.i, truth.j, n))
    output_len = np.ones(n, dtype=np.int64)
    result["pairs_above_threshold"] = len(truth_keys)
    for mode in MODES:
        start = time.perf_counter()
        outcome = dedup_rows(emb, output_len, DedupConfig(mode=mode, threshold=threshold, keep="first"), 0)
        wall = time.perf_counter() - start
        found = np.unique(pair_keys(outcome.pairs.i, outcome.pairs.j, n))
        recall = len(np.intersect1d(found, truth_keys)) / max(len(truth_keys), 1)
        result[mode] = {
            **_kept_difference(outcome.decision.keep, exact),
            "wall_s": round(wall, 2),
            "pairs_found": len(found),
            "pair_recall_no_exclusions": round(recall, 5),
            **{k: outcome.stats[k] for k in STAT_KEYS if k in outcome.stats},
        }
    if semhash:
        result["semhash"] = _semhash(texts, encoder, exact, threshold)
        for mode in MODES:  # SemHash's wall includes its encode: the mode's gets the same encode added
            if "wall_s" in result["semhash"]:
                own = result[mode]["wall_s"] + result["encode_s"]
                result[mode]["speed_vs_semhash"] = round(result["semhash"]["wall_s"] / own, 2)  # above 1: faster
    result["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _semhash(texts: list[str], encoder, exact: np.ndarray, threshold: float) -> dict:
    """SemHash 0.5 ``self_deduplicate`` with the same static model on the same texts."""
    try:
        from semhash import SemHash
    except ImportError:
        return {"skipped": "semhash is not installed (pip install semhash)"}
    start = time.perf_counter()
    index = SemHash.from_records(records=texts, model=encoder.model)
    deduplicated = index.self_deduplicate(threshold=threshold)
    wall = time.perf_counter() - start
    position = {text: i for i, text in enumerate(texts)}
    keep = np.zeros(len(texts), dtype=bool)
    keep[[position[t] for t in deduplicated.selected]] = True
    return {**_kept_difference(keep, exact), "wall_s": round(wall, 2)}


def main(source: Path, rows: int, json_path: Path | None, sparse: bool = False) -> dict:
    import json

    result = run_text(source, rows, sparse=sparse)
    print(json.dumps(result, indent=2))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"dedup_text": result}, indent=2) + "\n")
    return result
