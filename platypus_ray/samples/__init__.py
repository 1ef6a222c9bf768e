"""The sample corpus and benchmark that ship with the project (for ``make demo``).

``python -m platypus_ray.samples`` regenerates ``corpus.jsonl``, ``benchmark.jsonl`` and
``chat.jsonl`` (the corpus's rows as conversations) here, deterministically. The corpus is
written by this module (no third-party data): varied instruction families, plus planted exact
duplicates, paraphrases, benchmark leaks and malformed rows so every refine decision shows up
in the demo.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SAMPLES_DIR = Path(__file__).parent
CORPUS = SAMPLES_DIR / "corpus.jsonl"
BENCHMARK = SAMPLES_DIR / "benchmark.jsonl"
CHAT = SAMPLES_DIR / "chat.jsonl"

_COUNTRIES = [
    ("France", "Paris", "euro"),
    ("Japan", "Tokyo", "yen"),
    ("Kenya", "Nairobi", "shilling"),
    ("Peru", "Lima", "sol"),
    ("Norway", "Oslo", "krone"),
    ("Egypt", "Cairo", "pound"),
    ("Canada", "Ottawa", "dollar"),
    ("Vietnam", "Hanoi", "dong"),
    ("Chile", "Santiago", "peso"),
    ("Poland", "Warsaw", "zloty"),
    ("India", "New Delhi", "rupee"),
    ("Ghana", "Accra", "cedi"),
]
_WORDS = [
    ("happy", "joyful", "sad"),
    ("big", "large", "small"),
    ("fast", "quick", "slow"),
    ("bright", "luminous", "dim"),
    ("brave", "courageous", "timid"),
    ("calm", "serene", "agitated"),
    ("ancient", "old", "modern"),
    ("rich", "wealthy", "poor"),
    ("tiny", "minute", "huge"),
]
_FOODS = ["lentil soup", "banana bread", "vegetable curry", "tomato salad", "pancakes", "fried rice", "guacamole"]
_TOPICS = [
    "photosynthesis",
    "gravity",
    "inflation",
    "the water cycle",
    "plate tectonics",
    "vaccination",
    "compound interest",
    "machine learning",
    "the French Revolution",
    "black holes",
    "democracy",
]
_LANGS = [("Python", "def"), ("JavaScript", "function"), ("Rust", "fn"), ("Go", "func")]
_TASKS = [
    "reverse a string",
    "check whether a number is prime",
    "sum a list of numbers",
    "count the vowels in a word",
    "find the largest element of a list",
]
_SENTENCES = [
    "The meeting was postponed because of the storm.",
    "She finished the marathon in under four hours.",
    "Our team shipped the new feature last night.",
    "The museum opens at nine every morning.",
    "He forgot his umbrella at the train station.",
    "The recipe needs two cups of flour.",
]

# Benchmark questions (a small multiple-choice test set in the generic `questions` format).
_BENCH = [
    (
        "Which planet in our solar system has the most moons confirmed by astronomers as of 2023?",
        ["Saturn", "Earth", "Mars", "Mercury"],
        0,
    ),
    ("What is the chemical symbol for the element gold on the periodic table?", ["Au", "Ag", "Gd", "Go"], 0),
    (
        "Which organelle is known as the powerhouse of the cell because it produces most of its ATP?",
        ["Mitochondrion", "Ribosome", "Nucleus", "Golgi apparatus"],
        0,
    ),
    (
        "In which year did the Berlin Wall fall, allowing free movement between East and West Berlin?",
        ["1989", "1961", "1975", "1991"],
        0,
    ),
    ("What is the value of seven multiplied by eight minus six?", ["50", "56", "62", "48"], 0),
    (
        "Which gas do plants absorb from the atmosphere and use during photosynthesis to make sugar?",
        ["Carbon dioxide", "Oxygen", "Nitrogen", "Helium"],
        0,
    ),
    (
        "Who wrote the novel Pride and Prejudice, first published in 1813?",
        ["Jane Austen", "Charlotte Bronte", "Mary Shelley", "George Eliot"],
        0,
    ),
    (
        "What is the largest ocean on Earth by surface area and by volume?",
        ["Pacific Ocean", "Atlantic Ocean", "Indian Ocean", "Arctic Ocean"],
        0,
    ),
    (
        "Which data structure follows the last in, first out principle when elements are added and removed?",
        ["Stack", "Queue", "Heap", "Linked list"],
        0,
    ),
    ("How many sides does a regular hexagon have when drawn on a flat plane?", ["6", "5", "8", "7"], 0),
    (
        "Which blood cells are primarily responsible for fighting infections in the human body?",
        ["White blood cells", "Red blood cells", "Platelets", "Plasma cells"],
        0,
    ),
    (
        "What is the boiling point of pure water at sea level measured in degrees Celsius?",
        ["100", "90", "110", "80"],
        0,
    ),
]


def corpus_rows(seed: int = 0) -> list[str]:
    """JSONL lines of the sample corpus (some deliberately malformed)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for country, capital, currency in _COUNTRIES:
        rows.append(
            {
                "instruction": f"What is the capital city of {country}?",
                "input": "",
                "output": f"The capital of {country} is {capital}.",
            }
        )
        rows.append(
            {
                "instruction": f"Write a short travel tip for a first-time visitor to {capital}.",
                "input": "",
                "output": (
                    f"Visit {capital} early in the morning, carry some local {currency} in cash, and walk the old town."
                ),
            }
        )
    for word, synonym, antonym in _WORDS:
        rows.append(
            {
                "instruction": "Give a synonym and an antonym for the given word.",
                "input": word,
                "output": f"Synonym: {synonym}. Antonym: {antonym}.",
            }
        )
    for food in _FOODS:
        rows.append(
            {
                "instruction": f"List the main ingredients needed to cook {food}.",
                "input": "",
                "output": f"To make {food} you need a few staple ingredients; adjust the spices to taste.",
            }
        )
    for topic in _TOPICS:
        rows.append(
            {
                "instruction": f"Explain {topic} to a ten-year-old.",
                "input": "",
                "output": f"{topic.capitalize()} is easiest to understand with an everyday example. " * 2,
            }
        )
        rows.append(
            {
                "instruction": f"Write a haiku about {topic}.",
                "input": "",
                "output": f"Quiet thoughts on {topic}\nslowly unfolding like dawn\nthe world learns and grows",
            }
        )
    for lang, keyword in _LANGS:
        for task in _TASKS:
            rows.append(
                {
                    "instruction": f"Write a {lang} function to {task}.",
                    "input": "",
                    "output": f"{keyword} solve(x) {{ /* {task} */ }}",
                }
            )
    for sentence in _SENTENCES:
        rows.append(
            {
                "instruction": "Rewrite the sentence in the passive voice.",
                "input": sentence,
                "output": f"(passive) {sentence}",
            }
        )
        rows.append(
            {"instruction": "Translate the sentence into French.", "input": sentence, "output": f"(fr) {sentence}"}
        )
    for _ in range(12):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        rows.append(
            {
                "instruction": f"A shop sells {a} apples in the morning and {b} in the afternoon. "
                "How many apples does it sell in total?",
                "input": "",
                "output": f"It sells {a} + {b} = {a + b} apples.",
            }
        )
    rng.shuffle(rows)

    planted: list[dict] = []
    planted += [dict(rows[k]) for k in (3, 17, 29)]  # exact duplicates
    longer = dict(rows[5])
    longer["output"] = rows[5]["output"] + " (a longer, more detailed answer)"
    planted.append(longer)  # exact duplicate with a longer output: this copy wins
    planted.append(
        {
            "instruction": "Which city is the capital of France?",
            "input": "",
            "output": "Paris is the capital of France.",
        }
    )  # paraphrase
    planted.append(
        {
            "instruction": "Explain photosynthesis in simple words a 10 year old understands.",
            "input": "",
            "output": "Plants use sunlight to turn air and water into food.",
        }
    )  # paraphrase
    q = _BENCH[1][0]
    planted.append({"instruction": q, "input": "", "output": "Au"})  # verbatim benchmark leak
    planted.append(
        {
            "instruction": "Which organelle is called the powerhouse of the cell because it makes most ATP?",
            "input": "",
            "output": "The mitochondrion.",
        }
    )  # paraphrased leak
    planted.append(
        {"instruction": f"Answer this quiz question: {_BENCH[3][0]}", "input": "", "output": "1989"}
    )  # leak wrapped in a prompt
    lines = [json.dumps(r) for r in rows + planted]
    lines.insert(40, '{"instruction": "Name three primary colors", "output": ')  # malformed JSON
    lines.insert(60, json.dumps({"instruction": "Summarize the text.", "input": "Some text."}))  # no output
    lines.insert(80, json.dumps({"instruction": "   ", "input": "", "output": "blank instruction"}))
    lines.insert(100, json.dumps({"instruction": 42, "input": "", "output": "not a string"}))
    return lines


def benchmark_rows() -> list[str]:
    return [
        json.dumps({"id": f"q{k}", "question": q, "choices": choices, "answer": answer})
        for k, (q, choices, answer) in enumerate(_BENCH)
    ]


def sample_rows() -> list[dict[str, str]]:
    """The valid rows of the shipped corpus in the refine stage's kept/ schema (for tiny runs)."""
    rows: list[dict[str, str]] = []
    for line in CORPUS.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        instruction, output = record.get("instruction"), record.get("output")
        if isinstance(instruction, str) and instruction.strip() and isinstance(output, str):
            rows.append(
                {
                    "id": str(len(rows)),
                    "instruction": instruction,
                    "input": record.get("input") or "",
                    "output": output,
                    "data_source": "sample",
                }
            )
    return rows


def chat_rows() -> list[str]:
    """JSONL lines of conversations (OpenAI messages) built from the corpus's rows: consecutive rows
    become one, two or three exchanges (so the corpus's planted duplicates and benchmark leaks sit
    in first and later turns), every fourth with a system prompt; plus two malformed ones."""
    rows = []
    for line in corpus_rows():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record.get("instruction"), str) and record["instruction"].strip() and "output" in record:
            rows.append(record)
    talks: list[dict] = []
    at = 0
    while at < len(rows):
        size = 1 + len(talks) % 3
        messages = [{"role": "system", "content": "You are a concise assistant."}] if len(talks) % 4 == 3 else []
        for row in rows[at : at + size]:
            user = f"{row['instruction']} {row['input']}" if row["input"] else row["instruction"]
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        talks.append({"messages": messages})
        at += size
    talks.insert(10, {"messages": [{"role": "user", "content": "And then?"}]})  # no assistant turn
    talks.insert(20, {"messages": [{"role": "user", "content": "Time?"}, {"role": "tool", "content": "12:00"}]})
    return [json.dumps(t) for t in talks]


def write_samples(directory: Path = SAMPLES_DIR) -> None:
    (directory / "corpus.jsonl").write_text("\n".join(corpus_rows()) + "\n")
    (directory / "chat.jsonl").write_text("\n".join(chat_rows()) + "\n")
    (directory / "benchmark.jsonl").write_text("\n".join(benchmark_rows()) + "\n")
