"""Consensus: planted cores are found exactly; counts, histograms and coverage against brute force."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from masklab.analysis import consensus, consensus_histogram, core_weights, keep_counts, union_coverage
from masklab.errors import UserError
from masklab.store.bits import MaskSet

SIZES = [1, 63, 64, 65, 129, 700]
# the package exports a function named `consensus`, which hides the module of that name from `import ... as`
consensus_module = importlib.import_module("masklab.analysis.consensus")


def planted_masks(n_masks: int, sizes, density: float, core: dict[int, np.ndarray],
                  never: dict[int, np.ndarray], seed: int) -> np.ndarray:
    """Fixed-count masks: `core` positions in every mask, `never` positions in none, the rest random."""
    rng = np.random.default_rng(seed)
    matrix = np.zeros((n_masks, sum(sizes)), dtype=bool)
    offsets = np.cumsum([0, *sizes])
    for k, n in enumerate(sizes):
        forced, banned = core.get(k, np.zeros(0, int)), never.get(k, np.zeros(0, int))
        free = np.setdiff1d(np.arange(n), np.concatenate([forced, banned]))
        extra = max(0, round(density * n) - len(forced))
        for row in range(n_masks):
            chosen = np.concatenate([forced, rng.permutation(free)[:extra]]).astype(int)
            matrix[row, offsets[k] + chosen] = True
    return matrix


def test_planted_core_is_found_exactly(monkeypatch):
    monkeypatch.setattr(consensus_module, "UNPACK_BYTES", 4096)   # many word and row blocks
    core = {0: np.array([0]), 2: np.array([0, 5, 63]), 3: np.array([64]), 5: np.array([1, 2, 3, 350, 699])}
    never = {4: np.array([7, 100, 128]), 5: np.array([0, 698])}
    masks = MaskSet.from_bool(planted_masks(40, SIZES, 0.5, core, never, seed=0), SIZES)
    found = core_weights(masks)
    assert (found["n_masks"] == 40).all()
    for k, name in enumerate(masks.layers["layer"]):
        np.testing.assert_array_equal(found.loc[found["layer"] == name, "index"], core.get(k, []))
    table = consensus(masks).set_index("layer")
    for k, name in enumerate(masks.layers["layer"]):
        assert table.loc[name, "kept_by_all"] == len(core.get(k, []))
    assert table.loc["all", "kept_by_all"] == sum(len(v) for v in core.values())
    assert table.loc["layer4", "kept_by_none"] == 3
    assert table.loc["layer5", "kept_by_none"] == 2


def test_keep_counts_against_unpacked_sum(monkeypatch):
    rng = np.random.default_rng(1)
    matrix = rng.random((65, sum(SIZES))) < 0.3
    masks = MaskSet.from_bool(matrix, SIZES)
    for unpack_bytes in (consensus_module.UNPACK_BYTES, 64 * 3):
        monkeypatch.setattr(consensus_module, "UNPACK_BYTES", unpack_bytes)
        np.testing.assert_array_equal(keep_counts(masks), matrix.sum(axis=0))
        np.testing.assert_array_equal(keep_counts(masks, "layer5"), matrix[:, -700:].sum(axis=0))
        np.testing.assert_array_equal(keep_counts(masks, 1), matrix[:, 1:64].sum(axis=0))


def test_histogram_against_binomial():
    bits = planted_masks(16, [4000, 130], 0.25, {}, {}, seed=2)
    masks = MaskSet.from_bool(bits, [4000, 130])
    table = consensus_histogram(masks)
    assert set(table["layer"]) == {"all", "layer0", "layer1"}
    sums = table.groupby("layer")[["n_weights", "expected"]].sum()
    np.testing.assert_allclose(sums.loc["layer0"], 4000)
    np.testing.assert_allclose(sums.loc["all"], 4130)
    layer0 = table[table["layer"] == "layer0"].set_index("n_masks_keeping")
    assert len(layer0) == 17
    # random masks: the observed histogram follows Binomial(16, 0.25) (chi-square, generous bound)
    well_populated = layer0[layer0["expected"] > 5]
    observed, expected = well_populated["n_weights"], well_populated["expected"]
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 40
    # every count against the unpacked masks, every expectation against the binomial pmf written out
    for name, columns in (("all", slice(None)), ("layer0", slice(0, 4000)), ("layer1", slice(4000, None))):
        part = table[table["layer"] == name]
        np.testing.assert_array_equal(part["n_masks_keeping"], np.arange(17))
        np.testing.assert_array_equal(part["n_weights"], np.bincount(bits[:, columns].sum(axis=0), minlength=17))
    for name, n in (("layer0", 4000), ("layer1", 130)):
        p = bits[:, :4000].mean() if name == "layer0" else bits[:, 4000:].mean()
        pmf = np.array([math.comb(16, k) * p ** k * (1 - p) ** (16 - k) for k in range(17)])
        part = table[table["layer"] == name]
        np.testing.assert_allclose(part["expected"], n * pmf, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(part["expected_fraction"], pmf, rtol=1e-12, atol=1e-300)


def test_union_coverage_against_brute_force():
    rng = np.random.default_rng(3)
    matrix = rng.random((9, sum(SIZES))) < 0.2
    masks = MaskSet.from_bool(matrix, SIZES, ids=np.arange(9) + 50)
    order = [58, 50, 53, 51, 52, 54, 55, 56, 57]
    table = union_coverage(masks, order=order)
    rows = np.array(order) - 50
    offsets = np.cumsum([0, *SIZES])
    for k, name in enumerate(["all", *masks.layers["layer"]]):
        columns = slice(None) if k == 0 else slice(offsets[k - 1], offsets[k])
        expected = np.logical_or.accumulate(matrix[rows][:, columns], axis=0).sum(axis=1)
        part = table[table["layer"] == name]
        np.testing.assert_array_equal(part["kept_by_any"], expected)
        np.testing.assert_array_equal(part["n_masks"], np.arange(1, 10))
        np.testing.assert_array_equal(part["mask_id"], order)
        np.testing.assert_allclose(part["union_fraction"], expected / (offsets[-1] if k == 0 else SIZES[k - 1]))
    final = table[table["n_masks"] == 9].set_index("layer")["union_fraction"]
    np.testing.assert_allclose(final, consensus(masks).set_index("layer")["union_fraction"].loc[final.index])


def test_expected_union_for_fixed_counts():
    masks = MaskSet.from_bool(planted_masks(5, [1000], 0.3, {}, {}, seed=4), [1000])
    layer = union_coverage(masks).query("layer == 'layer0'")
    np.testing.assert_allclose(layer["expected_fraction"], 1 - 0.7 ** np.arange(1, 6))


def test_refuses_bad_input():
    masks = MaskSet.from_bool(np.ones((3, 10), bool))
    with pytest.raises(UserError, match="min_masks"):
        core_weights(masks, min_masks=4)
    with pytest.raises(UserError, match="MaskSet"):
        consensus(np.ones((3, 10), bool))
