"""Refine's semantic-dedup wing: which rows are near-duplicates of a kept row.

Inside: ``similarity`` (exact tiled all-pairs search, float64 re-scoring near the threshold,
best matches against benchmark probes), ``clustered`` (k-means partitions, exact inside),
``pair_search`` (the mode choice and the per-row neighbour bound with its exact check), ``rounds``
(the greedy rule decided in parallel rounds of Ray tasks),
``greedy`` (the greedy walk in priority order), ``certificate`` (the check of every result) and
``recall`` (clustered against exact on a sample). The brute-force oracle the tests compare with
is :mod:`platypus_ray.devtools.dedup_reference`.

From outside, import from here: :func:`dedup_rows` (vectors and priorities in, decisions,
pairs and stats out, the certificate checked), :func:`certificate_line` (its console line) and
:func:`best_matches` (contamination's search against benchmark probes).
"""

from __future__ import annotations

from platypus_ray.refine.dedup.certificate import certificate_line
from platypus_ray.refine.dedup.pair_search import DedupOutcome, dedup_rows
from platypus_ray.refine.dedup.similarity import best_matches

__all__ = ["DedupOutcome", "best_matches", "certificate_line", "dedup_rows"]
