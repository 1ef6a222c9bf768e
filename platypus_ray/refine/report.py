"""Human-facing refine outputs: ``review.csv`` (flagged pairs side by side) and ``report.html``."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np

from platypus_ray.embedding import report_html as embedding_section
from platypus_ray.refine.dedup import certificate_line
from platypus_ray.refine.ledger import REMOVED, Decisions, IdLookup
from platypus_ray.testsets import BenchmarkItem

REVIEW_COLUMNS = [
    "kind",
    "category",
    "score",
    "signal",
    "source",
    "source_index",
    "id",
    "text",
    "matched",
    "matched_source",
    "matched_source_index",
    "matched_text",
    "removed",
]
BORDERLINE_MARGIN = 0.05  # near-duplicate removals this close above the threshold go to review
MAX_BORDERLINE = 2000


def review_rows(
    decisions: Decisions, items: list[BenchmarkItem], texts: dict[int, str], ids: IdLookup, threshold: float
) -> list[dict]:
    """Every contamination flag, then the borderline near-duplicate removals (lowest score first).
    ``texts`` and ``ids`` hold (at least) the rows :func:`review_uids` names."""
    by_item = {item.id: item for item in items}
    rows = []
    flagged = decisions.flagged()
    for uid in flagged[np.argsort(-decisions.score_of(flagged), kind="stable")]:
        item = by_item[decisions.flags[int(uid)].item_id]
        rows.append(_row(decisions, uid, "contamination", texts, ids, matched=item.id, matched_text=item.question))
    for uid in _borderline(decisions, threshold):
        match = int(decisions.matched_of(np.array([uid]))[0])
        rows.append(
            _row(
                decisions,
                uid,
                "near_duplicate",
                texts,
                ids,
                matched=ids.get(match),
                matched_text=texts.get(match, ""),
                matched_source=decisions.source_name(match),
                matched_index=int(decisions.source_index(np.array([match]))[0]),
            )
        )
    return rows


def review_uids(decisions: Decisions, threshold: float) -> np.ndarray:
    """Rows whose text the review file and the report show."""
    flagged = decisions.flagged()
    border = _borderline(decisions, threshold)
    top = _top_pairs(decisions)
    return np.unique(np.concatenate([flagged, border, decisions.matched_of(border), *top[:2]]).astype(np.int64))


def write_review(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REVIEW_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_report(
    path: Path,
    stats: dict,
    decisions: Decisions,
    nearest: np.ndarray,
    contamination_scores: np.ndarray,
    texts: dict[int, str],
    review: list[dict],
    cfg,
) -> None:
    """A single self-contained HTML file (plots inlined as SVG) that opens offline."""
    against_kept = (stats.get("dedup") or {}).get("mode") == "kept"  # the walk scores each row against kept rows only
    title = (
        "Cosine of each row to the nearest kept row before it"
        if against_kept
        else "Nearest-neighbour cosine among rows after decontamination"
    )
    plots = [
        _histogram(nearest[nearest > -1], cfg.dedup.threshold, title, "semantic dedup threshold"),
    ]
    if len(contamination_scores):
        plots.append(
            _histogram(
                contamination_scores,
                cfg.contamination.threshold,
                "Best benchmark-match cosine per training row",
                "contamination threshold",
            )
        )
    i, j, s = _top_pairs(decisions)
    where = lambda uid: f"{decisions.source_name(uid)}#{decisions.source_index(np.array([uid]))[0]}"
    top_pairs = [
        (
            f"{s[k]:.3f}",
            where(i[k]),
            texts.get(i[k], ""),
            where(j[k]),
            texts.get(j[k], ""),
        )
        for k in range(len(s))
    ]
    flags = [
        (
            r["score"],
            r["category"],
            r["signal"],
            f"{r['source']}#{r['source_index']}",
            r["text"],
            r["matched"],
            r["matched_text"],
        )
        for r in review
        if r["kind"] == "contamination"
    ][:50]
    counts = [
        (name, s_["rows"], s_["kept"], s_["invalid"], ", ".join(f"{k}: {v}" for k, v in s_["removed"].items()) or "-")
        for name, s_ in stats["per_source"].items()
    ]
    body = [
        "<h1>platypus-ray refine report</h1>",
        f"<p>{stats['input_rows']} input rows &rarr; <b>{stats['kept']} kept</b>, {stats['invalid']} invalid, "
        f"removed: {html.escape(json.dumps(stats['removed']))}</p>",
        _table(["source", "rows", "kept", "invalid", "removed"], counts),
        *(f"<p><b>WARNING:</b> {html.escape(w)}</p>" for w in stats.get("warnings", [])),
        *_languages_section(stats.get("languages")),
        *_dedup_section(stats.get("dedup")),
        *embedding_section(stats.get("embedding")),
        "<h2>Timings (s)</h2>",
        _table(list(stats["timings_s"]), [tuple(stats["timings_s"].values())]),
        *plots,
        "<h2>Contamination flags</h2>",
        _table(["score", "category", "signal", "row", "training text", "benchmark item", "item text"], flags)
        if flags
        else "<p>none</p>",
        "<h2>Most similar near-duplicate pairs</h2>",
        _table(["cosine", "row", "text", "row", "text"], top_pairs) if top_pairs else "<p>none</p>",
    ]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}"
        "table{border-collapse:collapse}"
    )
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>refine report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def _dedup_section(dedup: dict | None) -> list[str]:
    """The pair search that ran; for clustered mode, its recall as measured on this run."""
    if not dedup:
        return []
    parts = [f"<h2>Semantic dedup: {html.escape(dedup['mode'])}</h2><p>{html.escape(dedup['why'])}</p>"]
    if dedup["mode"] == "clustered":
        parts.append(
            f"<p>{dedup['clusters']} k-means clusters, {dedup['assignments_per_row']} clusters per row by the "
            f"bisector rule (largest cluster {dedup['largest_cluster']} rows); {dedup['search']} search. "
            "An exact search "
            f"for {dedup['exact_sample_rows']} random rows against all rows found {dedup['exact_pairs']} pairs at or "
            f"above the threshold; the clustered search had {dedup['found_pairs']} of them: <b>pair recall "
            f"{dedup['pair_recall']:.4f}</b>. {dedup['decisions_differing']} sampled rows would be decided differently "
            f"with their exact neighbours: <b>decision agreement {dedup['decision_agreement']:.4f}</b>.</p>"
        )
    if dedup.get("certificate"):
        parts.append(f"<p>{html.escape(certificate_line(dedup['certificate']))}</p>")
    return parts


def _languages_section(languages: dict | None) -> list[str]:
    """Per source: script shares, rows the model cannot read, and how alike its vectors are."""
    if not languages:
        return []
    rows = [
        (
            name,
            s.get("rows", ""),
            ", ".join(f"{k} {v:.0%}" for k, v in s.get("shares", {}).items()),
            s.get("outside", ""),
            s.get("mean_pairwise_cosine"),
            s.get("median_nearest_cosine"),
            s.get("near_duplicate_rate"),
            "COLLAPSED" if s.get("collapsed") else "",
        )
        for name, s in languages["per_source"].items()
    ]
    corpus = languages.get("corpus", {})
    rows.append(
        (
            "(corpus)",
            "",
            "",
            "",
            corpus.get("mean_pairwise_cosine"),
            corpus.get("median_nearest_cosine"),
            corpus.get("near_duplicate_rate"),
            "",
        )
    )
    header = [
        "source",
        "valid rows",
        "scripts",
        "outside model",
        "mean pairwise cosine",
        "median nearest cosine",
        "near-duplicate rate",
        "",
    ]
    return [f"<h2>Languages (model reads: {html.escape(str(languages['model_languages']))})</h2>", _table(header, rows)]


def _row(
    decisions: Decisions,
    uid: int,
    kind: str,
    texts: dict[int, str],
    ids: IdLookup,
    matched: str,
    matched_text: str,
    matched_source: str = "",
    matched_index: int = -1,
) -> dict:
    flag = decisions.flags.get(int(uid))
    return {
        "kind": kind,
        "category": flag.category if flag else "",
        "score": round(float(decisions.score_of(np.array([uid]))[0]), 4),
        "signal": flag.signal if flag else "",
        "source": decisions.source_name(uid),
        "source_index": int(decisions.source_index(np.array([uid]))[0]),
        "id": ids.get(uid),
        "text": texts.get(uid, ""),
        "matched": matched,
        "matched_source": matched_source,
        "matched_source_index": matched_index,
        "matched_text": matched_text,
        "removed": decisions.status_of(uid) == REMOVED,
    }


def _borderline(decisions: Decisions, threshold: float) -> np.ndarray:
    near = np.flatnonzero(decisions.has_reason("near_duplicate") & (decisions.score < threshold + BORDERLINE_MARGIN))
    return decisions.uid_at(near[np.argsort(decisions.score[near], kind="stable")][:MAX_BORDERLINE])


def _top_pairs(decisions: Decisions, k: int = 20):
    if decisions.near_pairs is None:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    i, j, s = decisions.near_pairs
    top = np.argsort(-s, kind="stable")[:k]
    return i[top], j[top], s[top]


def _histogram(values: np.ndarray, threshold: float, title: str, label: str, bins: int = 50) -> str:
    """An inline SVG histogram with the threshold marked (no plotting library: importing and first
    drawing with matplotlib cost every refine run 0.5-0.9 s). Each bar carries its row count."""
    width, height, left, right, top, bottom = 700, 260, 56, 16, 30, 44
    values = np.asarray(values, dtype=np.float64)
    low = min(float(values.min()), threshold) if len(values) else threshold - 0.5
    high = max(float(values.max()), threshold) if len(values) else threshold + 0.5
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    peak = max(int(counts.max()) if len(counts) else 0, 1)
    plot_w, plot_h = width - left - right, height - top - bottom
    x = lambda v: left + (v - low) / (high - low) * plot_w
    y = lambda c: top + plot_h * (1 - c / peak)
    parts = [
        f'<svg class="histogram" width="{width}" height="{height}" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
    ]
    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        parts.append(
            f'<rect x="{x(a):.1f}" y="{y(count):.1f}" width="{max(x(b) - x(a) - 1, 0.5):.1f}" '
            f'height="{top + plot_h - y(count):.1f}" fill="#4477aa" data-rows="{int(count)}">'
            f"<title>{a:.3f} to {b:.3f}: {int(count)} rows</title></rect>"
        )
    axis_y = top + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#333"/>')
    for tick in np.linspace(low, high, 6):
        parts.append(f'<text x="{x(tick):.1f}" y="{axis_y + 16}" text-anchor="middle" font-size="11">{tick:.2f}</text>')
    for count in (0, peak // 2, peak):
        parts.append(f'<text x="{left - 6}" y="{y(count) + 4:.1f}" text-anchor="end" font-size="11">{count}</text>')
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" font-size="12">cosine similarity</text>'
    )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
        'text-anchor="middle" font-size="12">rows</text>'
    )
    parts.append(
        f'<line x1="{x(threshold):.1f}" y1="{top}" x2="{x(threshold):.1f}" y2="{axis_y}" stroke="#cc3311" '
        'stroke-dasharray="5,4" stroke-width="2"/>'
    )
    parts.append(
        f'<text x="{x(threshold) - 4:.1f}" y="{top + 12}" text-anchor="end" font-size="11" fill="#cc3311">'
        f"{html.escape(label)} {threshold:g}</text>"
    )
    return "".join(parts) + "</svg>"


def _table(header: list[str], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
