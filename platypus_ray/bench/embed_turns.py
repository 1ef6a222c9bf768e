"""Which text stands for a conversation in semantic dedup: its first user turn or all of them
(``embed_turns``)? Measured on conversations built from the shared Alpaca sample:

    python -m platypus_ray.bench.embed_turns ../shared/data/alpaca_5000.json [--json FILE]

Each Alpaca row is one exchange (its user turn is refine's embedded text). Pairs of conversations:

* **reworded duplicates**: ``[a, b]`` and ``[a', b']`` where ``a ~ a'`` and ``b ~ b'`` are
  near-duplicate Alpaca rows (cosine >= 0.8 under MiniLM): the same conversation, reworded;
  dedup should remove one.
* **same opening, different talk**: ``[a, b]`` and ``[a, c]`` with ``b``, ``c`` unrelated rows:
  two conversations that share a first question (a stock opener); dedup should keep both.

Printed per mode at the dedup threshold: the share of each kind of pair at or above it, and the
share of ``all`` texts longer than the encoder's window (later turns then unseen). ``--json FILE``
writes the same numbers with the command, CPU and date (``docs/benchmarks/embed-turns.json``).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from platypus_ray.bench.machine import provenance


def main(argv: list[str] | None = None) -> None:
    from sentence_transformers import SentenceTransformer

    from platypus_ray.embedding import resolve_model
    from platypus_ray.refine.rows import conversation_text, embed_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("alpaca", help="an Alpaca JSON array (instruction, input, output)")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--json", type=Path, help="write the numbers here as well, with the command, CPU and date")
    args = parser.parse_args(argv)
    record = provenance("platypus_ray.bench.embed_turns", argv)
    rows = json.loads(Path(args.alpaca).read_text())
    texts = [embed_text(r["instruction"], r.get("input") or "") for r in rows]
    model = SentenceTransformer(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    encode = lambda batch: model.encode(batch, normalize_embeddings=True, batch_size=64)
    vectors = encode(texts)
    sims = np.triu(vectors @ vectors.T, k=1)
    near: list[tuple[int, int]] = []
    used: set[int] = set()
    for i, j in zip(*np.nonzero(sims >= args.threshold)):
        if i not in used and j not in used and texts[i] != texts[j]:
            near.append((int(i), int(j)))
            used.update((int(i), int(j)))
    rng = random.Random(0)
    rng.shuffle(near)
    half = len(near) // 2
    reworded = [([texts[a], texts[b]], [texts[a2], texts[b2]]) for (a, a2), (b, b2) in zip(near[:half], near[half:])]
    free = [i for i in range(len(texts)) if i not in used]
    opening = []
    for _ in range(len(reworded)):
        a, b, c = rng.sample(free, 3)
        opening.append(([texts[a], texts[b]], [texts[a], texts[c]]))
    shares: dict[str, dict[str, float]] = {}
    for mode in ("first", "all"):
        scores = {}
        for name, pairs in (("reworded duplicates", reworded), ("same opening", opening)):
            left = encode([conversation_text(p[0], mode) for p in pairs])
            right = encode([conversation_text(p[1], mode) for p in pairs])
            scores[name] = (left * right).sum(1)
        shares[mode] = {name: round(float(np.mean(s >= args.threshold)), 4) for name, s in scores.items()}
        print(
            f"embed_turns {mode:5s}: "
            + "; ".join(
                f"{name} >= {args.threshold}: {np.mean(s >= args.threshold):.3f} (n={len(s)})"
                for name, s in scores.items()
            )
        )
    window = int(model.max_seq_length or 512)  # MiniLM: 256
    long = [len(model.tokenizer(conversation_text(p[0], "all"))["input_ids"]) > window for p in reworded + opening]
    print(f"embed_turns all: texts over the encoder's {window} tokens: {np.mean(long):.3f}")
    if args.json:
        result = {
            "threshold": args.threshold,
            "pairs": {"reworded duplicates": len(reworded), "same opening": len(opening)},
            "share_at_or_above_threshold": shares,
            "window_tokens": window,
            "all_texts_over_window": round(float(np.mean(long)), 4),
        }
        args.json.write_text(json.dumps({**record, **result}, indent=1) + "\n")


if __name__ == "__main__":
    main()
