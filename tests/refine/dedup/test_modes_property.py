"""Every dedup mode, end to end through dedup_rows, against the brute-force greedy reference:
random orders, thresholds, pairs built at exactly the threshold, cluster counts down to 16 rows a
cluster, and forced chains; each result's certificate holds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from platypus_ray.devtools.dedup_reference import greedy_reference
from platypus_ray.refine.config import DedupConfig
from platypus_ray.refine.dedup import dedup_rows
from platypus_ray.refine.dedup.greedy import priority_order
from tests.refine.dedup.test_kept_walk import families
from tests.refine.dedup.test_partition import with_pairs_at
from tests.refine.dedup.test_rounds import chain, side_by_side


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n_families=st.integers(1, 12),
    copies=st.integers(1, 20),
    spread=st.sampled_from([0.05, 0.2, 0.35]),
    at_threshold=st.integers(0, 20),
    chain_length=st.sampled_from([0, 30]),
    threshold=st.sampled_from([0.7, 0.8, 0.9]),
    rows_per_cluster=st.sampled_from([16, 50, 1000]),
    keep=st.sampled_from(["first", "longest_output"]),
    mode=st.sampled_from(["kept", "exact", "clustered"]),
    per_row=st.sampled_from([1, 32]),
)
def test_every_mode_keeps_the_brute_force_set(
    ray_session,
    seed,
    n_families,
    copies,
    spread,
    at_threshold,
    chain_length,
    threshold,
    rows_per_cluster,
    keep,
    mode,
    per_row,
):
    emb = with_pairs_at(families(seed, n_families, copies, spread, dim=8), threshold, at_threshold, seed)
    if chain_length:
        emb = side_by_side(chain(chain_length, threshold), emb)
    output_len = np.random.default_rng(seed).integers(1, 6, len(emb))  # many ties: the id breaks them
    cfg = DedupConfig(
        mode=mode,
        threshold=threshold,
        keep=keep,
        rows_per_cluster=rows_per_cluster,
        neighbours_per_row=per_row,
        max_pairs=0,
        recall_sample=50,
    )
    outcome = dedup_rows(emb, output_len, cfg, 0)
    order = priority_order(output_len, keep)
    np.testing.assert_array_equal(outcome.decision.keep, greedy_reference(emb, order, threshold))
    assert outcome.stats["certificate"]["holds"] and outcome.stats["mode"] == mode
