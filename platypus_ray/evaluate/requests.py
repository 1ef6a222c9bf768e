"""Held-out rows as log-likelihood requests, formatted and masked exactly as training does.

Benchmark requests are not built here: lm-evaluation-harness's task objects build them
(:mod:`platypus_ray.evaluate.tasks`).
"""

from __future__ import annotations


def validation_requests(rows: list[dict], add_eos: bool) -> list[dict]:
    """Held-out rows as the train stage formats them: the Alpaca prompt is the context, the output
    (plus EOS) the continuation, so the loss is exactly the masked training loss."""
    from platypus_ray.train.prompts import build_prompt

    return [
        {
            "item_id": str(row.get("id", i)),
            "context": build_prompt(row["instruction"], row.get("input") or ""),
            "continuation": row["output"],
            "add_eos": add_eos,
            "move_space": False,
        }
        for i, row in enumerate(rows)
    ]
