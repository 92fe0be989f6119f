"""Random mask sets (masklab.analysis.random_sets): the layout and exact per-layer counts kept, uniform over
the subsets of the count, the same bits from the numba kernel and the numpy code."""

from __future__ import annotations

import numpy as np
import pytest

import masklab.analysis.random_sets as random_sets
from masklab.analysis import random_masks
from masklab.store.bits import MaskSet

SIZES = [100, 37, 500, 1, 64]


def test_random_masks_keep_layout_and_per_layer_counts(fixed_count_masks):
    masks = fixed_count_masks(3, SIZES, density=0.4, seed=3)
    sampled = random_masks(masks, n_masks=7, random_state=0)
    assert sampled.same_layout(masks) and len(sampled) == 7
    source_rows = [0, 1, 2, 0, 1, 2, 0]
    expected_counts = masks.popcounts(per_layer=True)[source_rows]
    np.testing.assert_array_equal(sampled.popcounts(per_layer=True), expected_counts)
    again = random_masks(masks, n_masks=7, random_state=0)
    np.testing.assert_array_equal(sampled.bits, again.bits)


def test_random_masks_are_uniform_over_subsets_of_the_count():
    from math import comb

    from scipy.stats import chi2

    n, c, draws = 7, 3, 35_000
    layout = MaskSet.from_bool(np.zeros((1, n), dtype=bool)).layers
    bits = random_sets.random_mask_bits(layout, np.array([[c]]), draws, np.random.default_rng(0))
    assert (np.bitwise_count(bits).sum(axis=1) == c).all()
    _, observed = np.unique(bits[:, 0], return_counts=True)
    assert len(observed) == comb(n, c)
    expected = draws / comb(n, c)
    statistic = ((observed - expected) ** 2 / expected).sum()
    assert chi2.sf(statistic, comb(n, c) - 1) > 0.001


@pytest.mark.parametrize("density", [0.0, 1.0, 0.001, 0.999, 0.1, 0.5, 0.77])
def test_random_masks_have_exact_counts_and_clean_padding(fixed_count_masks, density):
    masks = fixed_count_masks(3, [1000, 130, 64, 1], density=density, seed=9)
    sampled = random_masks(masks, n_masks=9, random_state=1)
    np.testing.assert_array_equal(sampled.popcounts(per_layer=True), masks.popcounts(per_layer=True)[[0, 1, 2] * 3])
    for i in range(9):  # no bit beyond a layer's end
        assert sampled.unpack(i).sum() == sampled.popcounts()[i]
    frequency = np.mean([sampled.unpack(i)[:1000] for i in range(9)], axis=0)
    assert frequency.mean() == pytest.approx(round(density * 1000) / 1000)


def test_the_count_kernel_chooses_the_bits_the_numpy_code_does(fixed_count_masks, monkeypatch):
    pytest.importorskip("numba")
    masks = fixed_count_masks(5, [1000, 130, 64], density=0.3, seed=13)
    chosen = []
    kernel_of = random_sets._flip_kernel
    monkeypatch.setattr(random_sets, "SMALL_FLIP_DRAWS", 0)  # the kernel even for these few draws
    monkeypatch.setattr(random_sets, "_flip_kernel", lambda n=None: chosen.append(kernel_of(n)) or chosen[-1])
    compiled = random_masks(masks, n_masks=12, random_state=4).bits
    assert chosen and all(k is not None for k in chosen)
    monkeypatch.setattr(random_sets, "_flip_kernel", lambda n=None: None)
    np.testing.assert_array_equal(random_masks(masks, n_masks=12, random_state=4).bits, compiled)
