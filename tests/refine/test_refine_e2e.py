"""End to end on real Ray, real MiniLM: planted duplicates, paraphrases, leaks and bad rows
land exactly where they should, and every input row is accounted for once."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from platypus_ray.core.config import validate_config
from platypus_ray.refine import RefineConfig, run

pytestmark = pytest.mark.slow

PASSAGE = (
    "This question refers to the following information.\n"
    "In the spring of 1852 the settlers of Millbrook gathered in the meeting house to draft a charter for their town. "
    "They agreed that every household would contribute two days of labor each season to repair the mill road, "
    "that the common pasture would be shared by rotation among the families, and that disputes over water from the "
    "creek would be settled by a council of three elders chosen by lot. The charter also promised a free school for "
    "every child under twelve, paid for by a small tax on timber sold outside the valley. Within a decade the town "
    "had doubled in size, "
    "and travelers remarked on the order of its fields and the good condition of its roads.\n"
    "The provisions of the Millbrook charter most directly reflect which of the following?"
)
EXCERPT = " ".join(PASSAGE.split()[40:95])
CAR = "A car travels 150 kilometers in 3 hours at a constant speed. What is its speed in kilometers per hour?"


def row(instruction, output, input_text=""):
    return json.dumps({"instruction": instruction, "input": input_text, "output": output})


CHAT = [
    row("What is the capital city of Australia?", "Canberra."),  # 0 exact dup of 4
    row("Write a haiku about autumn leaves falling.", "Red leaves drift and fall"),  # 1
    row("Write an SQL query that returns the ten most recent orders.", "SELECT 1"),  # 2 paraphrase of 7
    row("How do I bake sourdough bread at home?", "Feed the starter, mix, proof, bake."),  # 3
    row("what is the capital  city of AUSTRALIA?", "The capital of Australia is Canberra."),  # 4
    row("Draft a polite email declining a meeting invitation.", "Dear team, ..."),  # 5
    '{"instruction": "Name three primary colors", "output": ',  # 6 malformed
    row("Write a SQL query to get the 10 latest orders.", "SELECT * FROM orders ORDER BY ts DESC LIMIT 10"),  # 7
    row("Why does the ocean have tides?", "The moon's gravity pulls on the oceans."),  # 8
    row(f"Solve: {CAR}", "50 km/h"),  # 9 verbatim leak
    row("What enzyme found in saliva starts breaking down starch in the mouth?", "Amylase."),  # 10 paraphrased leak
    json.dumps({"instruction": "Summarize this.", "input": "Some text."}),  # 11 no output
    row("Summarize the following passage.", "Town rules.", EXCERPT),  # 12 passage leak
    row("Explain how merge sort works and give its time complexity.", "Split, sort halves, merge: O(n log n)."),  # 13
    row("Compose a limerick about a cat who loves to swim.", "There once was a cat..."),  # 14
    row("Give me five tips for saving money on groceries.", "Plan meals, buy in bulk, ..."),  # 15
    row("List the planets of the solar system in order from the sun.", "Mercury, Venus, ..."),  # 16
    row("Translate 'good morning' into German.", "Guten Morgen."),  # 17
    row("Find three words that rhyme with 'light'.", "night, kite, bright"),  # 18
    row("Describe how volcanoes form.", "Magma rises through the crust."),  # 19
    json.dumps({"instruction": 12, "output": "x"}),  # 20 not a string
    row("Which city is the capital of Australia?", "Canberra is the capital."),  # 21 paraphrase of 4
]
FORUM = [  # CSV with its own column names
    {
        "prompt": "Explain how merge sort works and give its time complexity.",
        "context": "",
        "response": "Divide and merge.",
    },
    {"prompt": "Describe the life cycle of a butterfly.", "context": "", "response": "Egg, larva, pupa, adult."},
    {"prompt": "Tell me a joke.", "context": "", "response": "   "},
]
MMLU = [
    [
        "Which enzyme in human saliva begins the digestion of starch in the mouth?",
        "Amylase",
        "Pepsin",
        "Lipase",
        "Trypsin",
        "A",
    ],
    [CAR, "45", "50", "55", "60", "B"],
    [PASSAGE, "Direct democracy", "Communal self-government", "Monarchy", "Feudal obligation", "B"],
    ["Which of the following numbers is prime?", "21", "27", "29", "33", "C"],
]

# (source, source_index) -> (status, reason, matched (source, index) or benchmark item id)
EXPECTED = {
    ("chat", 0): ("removed", "exact_duplicate", ("chat", 4)),
    ("chat", 2): ("removed", "near_duplicate", ("chat", 7)),
    ("chat", 6): ("invalid", "malformed_json", None),
    ("chat", 9): ("removed", "contaminated", "mmlu/misc_test:1"),
    ("chat", 10): ("removed", "contaminated", "mmlu/misc_test:0"),
    ("chat", 11): ("invalid", "missing_field", None),
    ("chat", 12): ("removed", "contaminated", "mmlu/misc_test:2"),
    ("chat", 20): ("invalid", "not_a_string", None),
    ("chat", 21): ("removed", "near_duplicate", ("chat", 4)),
    ("forum", 0): ("removed", "exact_duplicate", ("chat", 13)),
    ("forum", 2): ("invalid", "empty", None),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def write_corpus(root: Path) -> Path:
    """The planted corpus (chat JSONL, forum CSV, an MMLU subject) under ``root``."""
    (root / "chat.jsonl").write_text("\n".join(CHAT) + "\n")
    with open(root / "forum.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "context", "response"])
        writer.writeheader()
        writer.writerows(FORUM)
    (root / "mmlu").mkdir()
    with open(root / "mmlu" / "misc_test.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(MMLU)
    return root


def make_config(corpus: Path, output: Path, extra_sources: tuple[dict, ...] = (), **dedup) -> RefineConfig:
    return validate_config(
        RefineConfig,
        {
            "sources": [
                {"path": str(corpus / "chat.jsonl"), "name": "chat"},
                {
                    "path": str(corpus / "forum.csv"),
                    "name": "forum",
                    "columns": {"instruction": "prompt", "input": "context", "output": "response"},
                },
                *extra_sources,
            ],
            "benchmarks": [{"path": str(corpus / "mmlu"), "format": "mmlu_csv", "name": "mmlu"}],
            "embedding": {"batch_size": 8, "actors": 2},
            "dedup": {"threshold": 0.8, **dedup},
            "output": str(output),
        },
    )


@pytest.fixture(scope="module")
def refined(ray_session, corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "refine"
    return run(make_config(corpus, output)), output


def test_every_planted_row_lands_where_expected(refined):
    _, output = refined
    ledger = pd.read_parquet(output / "ledger")
    by_key = {(r.source, r.source_index): r for r in ledger.itertuples()}
    for key, (status, reason, matched) in EXPECTED.items():
        entry = by_key[key]
        assert (entry.status, entry.reason) == (status, reason), key
        if isinstance(matched, tuple):
            assert (entry.matched_source, entry.matched_source_index) == matched, key
            assert entry.matched_id == by_key[matched].id
        elif isinstance(matched, str):
            assert (entry.matched_id, entry.benchmark) == (matched, "mmlu"), key
    unplanted = [k for k in by_key if k not in EXPECTED]
    assert all(by_key[k].status == "kept" for k in unplanted), [
        by_key[k] for k in unplanted if by_key[k].status != "kept"
    ]
    # Contamination details: the verbatim leak is a duplicate seen by every signal; the passage
    # excerpts are caught by a window probe of the long item (MiniLM: "embedding"), not only by
    # n-grams. The multilingual signal reads English too and puts all three at >= 0.8 of its
    # space, its duplicate cut, so theirs is the strongest category (MiniLM alone: gray_area).
    assert (by_key[("chat", 9)].category, by_key[("chat", 9)].signal) == ("duplicate", "embedding+multilingual+ngram")
    assert (by_key[("chat", 10)].signal, by_key[("chat", 10)].category) == ("embedding+multilingual", "duplicate")
    assert by_key[("chat", 12)].signal == "embedding+multilingual+ngram" and by_key[("chat", 12)].score >= 0.8
    assert "line 7: malformed JSON" in by_key[("chat", 6)].detail


def test_ledger_accounts_for_every_input_row_once_and_reconciles_with_stats(refined):
    result, output = refined
    ledger = pd.read_parquet(output / "ledger")
    assert len(ledger) == len(CHAT) + len(FORUM) == result.input_rows
    assert not ledger.duplicated(["source", "source_index"]).any()
    for source, n in (("chat", len(CHAT)), ("forum", len(FORUM))):
        assert sorted(ledger[ledger.source == source].source_index) == list(range(n))
    stats = json.loads((output / "stats.json").read_text())
    assert stats["kept"] == (ledger.status == "kept").sum() == result.kept == 14
    assert stats["invalid"] == (ledger.status == "invalid").sum() == 4
    assert stats["removed"] == ledger[ledger.status == "removed"].reason.value_counts().to_dict()
    assert stats["removed"] == {"exact_duplicate": 2, "near_duplicate": 2, "contaminated": 3}
    for source, counts in stats["per_source"].items():
        mine = ledger[ledger.source == source]
        assert counts["rows"] == len(mine) and counts["kept"] == (mine.status == "kept").sum()
    assert stats["contamination"]["mmlu"]["removed"] == 3
    assert 0 < stats["driver_peak_rss_mb"] < 4096 and "driver peak RSS" in result.summary()
    assert set(stats["timings_s"]) >= {
        "read_validate",
        "exact_dedup",
        "embed",
        "contamination",
        "semantic_dedup",
        "write",
    }


def test_kept_parquet_has_the_canonical_schema_in_input_order(refined):
    _, output = refined
    kept = pd.read_parquet(output / "kept")
    ledger = pd.read_parquet(output / "ledger")
    assert list(kept.columns) == ["id", "instruction", "input", "output", "data_source"]
    assert kept.id.tolist() == ledger[ledger.status == "kept"].id.tolist()
    assert set(kept.data_source) == {"chat", "forum"}
    assert "Summarize the following passage." not in set(kept.instruction)
    assert kept[kept.instruction.str.startswith("what is the capital")].output.tolist() == [
        "The capital of Australia is Canberra."
    ]


def test_review_csv_and_offline_report(refined):
    _, output = refined
    review = pd.read_csv(output / "review.csv")
    flags = review[review.kind == "contamination"]
    assert len(flags) == 3 and flags.matched.str.startswith("mmlu/").all()
    assert flags.text.str.len().gt(0).all() and flags.matched_text.str.len().gt(0).all()
    html = (output / "report.html").read_text()
    assert html.count('<svg class="histogram"') == 2  # two histograms, inlined
    stats = json.loads((output / "stats.json").read_text())
    counts = [sum(map(int, re.findall(r'data-rows="(\d+)"', svg))) for svg in html.split('<svg class="histogram"')[1:]]
    # the dedup one: every row with a higher-priority row to compare with; the contamination one: every survivor
    assert 0 < counts[0] <= stats["kept"] + stats["removed"].get("near_duplicate", 0)
    assert counts[1] == stats["kept"] + stats["removed"].get("near_duplicate", 0) + stats["removed"].get(
        "contaminated", 0
    )
    assert "http://" not in html and "https://" not in html  # opens offline
    assert (output / "config.yaml").is_file()


def test_a_new_source_embeds_only_its_rows_and_the_cached_rows_decide_as_the_fresh_run(refined, corpus, tmp_path):
    """The cache the first run wrote serves every old row; the two new rows (unlike any other) are the
    only ones embedded, and every old row's decision equals the fresh run's."""
    first, output = refined
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        "".join(
            json.dumps({"instruction": q, "output": "x"}) + "\n"
            for q in ("Name two noble gases.", "What does a barometer measure?")
        )
    )
    config = make_config(corpus, output.parent / "grown", extra_sources=({"path": str(extra), "name": "extra"},))
    grown = run(config)
    assert (
        first.stats["embedding"]["from_cache"] == 0
        and first.stats["embedding"]["cache"] == grown.stats["embedding"]["cache"]
    )
    assert (grown.stats["embedding"]["from_cache"], grown.stats["embedding"]["computed"]) == (
        first.stats["embedding"]["computed"],
        2,
    )
    columns = ["source", "source_index", "status", "reason", "matched_id", "category"]
    fresh = pd.read_parquet(output / "ledger", columns=columns)
    cached = pd.read_parquet(output.parent / "grown" / "ledger", columns=columns)
    pd.testing.assert_frame_equal(cached[cached.source != "extra"].reset_index(drop=True), fresh)
    assert (cached[cached.source == "extra"].status == "kept").all()


def test_keep_first_rerun_replaces_output_whole(refined, corpus):
    first, output = refined
    marker = output / "ledger" / "stale-marker.parquet"
    marker.write_text("old run")
    result = run(make_config(corpus, output, keep="first"))
    # Another keep policy embeds nothing: every vector comes from the cache beside the output.
    embedded = first.stats["embedding"]["computed"]
    assert (result.stats["embedding"]["from_cache"], result.stats["embedding"]["computed"]) == (embedded, 0)
    assert (
        "backend" not in result.stats["embedding"]
        and f"{embedded} vectors from the cache, 0 computed" in result.summary()
    )
    ledger = pd.read_parquet(output / "ledger")
    by_key = {(r.source, r.source_index): r for r in ledger.itertuples()}
    # Input order now decides: the earlier SQL row stays and the later paraphrase goes.
    assert by_key[("chat", 2)].status == "kept"
    assert (by_key[("chat", 7)].reason, by_key[("chat", 7)].matched_source_index) == ("near_duplicate", 2)
    assert not marker.exists()  # no mix of old and new files
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert result.kept == 14
