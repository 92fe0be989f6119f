"""Samples (masklab.analysis.sampling): nested seeded mask samples and distance-stratified pairs, checked against
a brute-force ranking of every pair."""

import numpy as np
import pytest

from masklab.analysis.distances import intersections
from masklab.analysis.sampling import hamming_histogram, mask_sample, stratified_pairs
from masklab.store.bits import MaskSet


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(1)
    # few bits: many ties in distance, which the ranking must break by pair order
    return intersections(MaskSet.from_bool(rng.random((31, 40)) < 0.5, layer_sizes=[25, 15]))


def test_mask_samples_are_seeded_nested_and_stated():
    small, large = mask_sample(1000, 50, seed=3, stage="a"), mask_sample(1000, 400, seed=3, stage="b")
    assert set(small.positions) <= set(large.positions) and len(set(large.positions)) == 400
    assert np.array_equal(small.positions, mask_sample(1000, 50, seed=3).positions)
    assert not np.array_equal(small.positions, mask_sample(1000, 50, seed=4).positions)
    assert small.row() == {"stage": "a", "n_used": 50, "n_total": 1000, "unit": "masks",
                           "how": "a uniform random sample without replacement", "seed": 3}
    assert small.describe() == "50 of 1,000 masks (a uniform random sample without replacement, seed 3)"
    everything = mask_sample(16, 200, seed=0)
    assert everything.complete and everything.describe() == "all 16 masks" and everything.seed is None


def test_stratified_pairs_take_the_pair_of_each_drawn_rank(result):
    n = len(result.ids_a)
    rows, cols = np.triu_indices(n, 1)
    hamming = result.metric("hamming", "all")[rows, cols]
    ranked = np.argsort(hamming, kind="stable")  # ties in pair (row-major) order
    assert np.array_equal(hamming_histogram(result), np.bincount(hamming, minlength=result.n_bits[0] + 1))
    pairs, sample = stratified_pairs(result, 12, seed=5, block_bytes=8 * n * 3)  # several blocks
    chosen = ranked[sample.positions]
    assert np.array_equal(pairs["mask_a"], result.ids_a[rows[chosen]])
    assert np.array_equal(pairs["mask_b"], result.ids_a[cols[chosen]])
    assert np.array_equal(pairs["hamming"], hamming[chosen])
    # one pair per stratum of equal count, in stratum order: distances never decrease, the range is spanned
    total = len(rows)
    bounds = np.arange(13) * total // 12
    assert ((sample.positions >= bounds[:-1]) & (sample.positions < bounds[1:])).all()
    assert (np.diff(pairs["hamming"]) >= 0).all()
    assert (pairs["stratum_min"] <= pairs["hamming"]).all() and (pairs["hamming"] <= pairs["stratum_max"]).all()
    assert pairs["stratum_min"].iloc[0] == hamming.min() and pairs["stratum_max"].iloc[-1] == hamming.max()
    again, _ = stratified_pairs(result, 12, seed=5)
    assert again.equals(pairs)
    assert "12 strata" in sample.describe() and "seed 5" in sample.describe()


def test_all_pairs_when_asked_for_more_than_there_are(result):
    n = len(result.ids_a)
    pairs, sample = stratified_pairs(result, 10**6)
    assert len(pairs) == n * (n - 1) // 2 and sample.complete and sample.unit == "pairs"


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_condensed_pair_indices_are_scipys_order_and_pair_samples_are_seeded(n):
    from scipy.spatial.distance import squareform

    from masklab.analysis.sampling import condensed_pairs, pair_sample

    total = n * (n - 1) // 2
    i, j = condensed_pairs(np.arange(total), n)
    square = np.zeros((n, n))
    square[i, j] = square[j, i] = np.arange(total)  # pair k at (i_k, j_k): scipy's condensed form gives k back
    assert np.array_equal(squareform(square, checks=False), np.arange(total))
    assert np.array_equal(i, np.triu_indices(n, 1)[0]) and np.array_equal(j, np.triu_indices(n, 1)[1])
    sample = pair_sample(n, 5, seed=4)
    assert sample.n_used == min(5, total) and sample.n_total == total and sample.unit == "pairs"
    assert np.array_equal(sample.positions, pair_sample(n, 5, seed=4).positions)
    assert len(np.unique(sample.positions)) == sample.n_used and (np.diff(sample.positions) > 0).all()
