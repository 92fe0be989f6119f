"""Random baselines: closed and exact forms against brute force and against sampled random masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import masklab.analysis.baselines as baselines
from masklab.analysis import distances, random_baseline, random_baseline_samples, random_masks, with_baseline
from masklab.errors import UserError
from masklab.store.bits import MaskSet

SIZES = [100, 37, 500, 1, 64]


def fixed_count_masks(n_masks: int, sizes, density: float, seed: int) -> MaskSet:
    rng = np.random.default_rng(seed)
    matrix = np.zeros((n_masks, sum(sizes)), dtype=bool)
    offsets = np.cumsum([0, *sizes])
    for row in range(n_masks):
        for k, n in enumerate(sizes):
            matrix[row, offsets[k] + rng.permutation(n)[:round(density * n)]] = True
    return MaskSet.from_bool(matrix, sizes)


def brute_force_jaccard(n: int, count_a: int, count_b: int) -> tuple[float, float]:
    """E and sd of the Jaccard index over every pair of subsets of sizes count_a, count_b of n items."""
    values = []
    for a in itertools.combinations(range(n), count_a):
        for b in itertools.combinations(range(n), count_b):
            union = len(set(a) | set(b))
            values.append(len(set(a) & set(b)) / union if union else 1.0)
    return float(np.mean(values)), float(np.std(values))


@pytest.mark.parametrize("n, count_a, count_b", [(6, 3, 2), (7, 3, 3), (5, 0, 0), (5, 5, 2), (8, 1, 6)])
def test_exact_jaccard_expectation_against_enumeration(n, count_a, count_b):
    mean, std, exact = baselines.layer_jaccard_moments(n, count_a, count_b)
    assert exact
    expected_mean, expected_std = brute_force_jaccard(n, count_a, count_b)
    assert mean[0] == pytest.approx(expected_mean, abs=1e-12)
    assert std[0] == pytest.approx(expected_std, abs=1e-12)


def test_delta_method_is_tight_for_large_layers(monkeypatch):
    n, counts = np.array([5000, 20000]), np.array([[2500, 5000]])
    exact_mean, exact_std, exact = baselines.layer_jaccard_moments(n, counts, counts)
    total_mean, total_std, total_exact = baselines.total_jaccard_moments(n, counts, counts)
    assert exact and total_exact
    monkeypatch.setattr(baselines, "EXACT_PMF_POINTS", 0)
    delta_mean, delta_std, exact = baselines.layer_jaccard_moments(n, counts, counts)
    total_delta_mean, total_delta_std, total_exact = baselines.total_jaccard_moments(n, counts, counts)
    assert not exact and not total_exact
    np.testing.assert_allclose(delta_mean, exact_mean, rtol=1e-7)
    np.testing.assert_allclose(delta_std, exact_std, rtol=1e-2)
    np.testing.assert_allclose(total_delta_mean, total_mean, rtol=1e-7)


def test_fixed_count_closed_forms():
    masks = fixed_count_masks(4, [1000, 64], density=0.25, seed=0)
    table = random_baseline(masks).set_index("layer")
    for layer in ("layer0", "layer1"):
        k = table.loc[layer, "density"]
        assert k == 0.25
        assert table.loc[layer, "matching"] == pytest.approx(k ** 2 + (1 - k) ** 2, abs=1e-15)
        assert table.loc[layer, "matching_iid"] == pytest.approx(0.625)
        assert table.loc[layer, "jaccard_iid"] == pytest.approx(k / (2 - k))
        n = table.loc[layer, "n_bits"]
        assert table.loc[layer, "intersection"] == pytest.approx(k * k * n)
    # the exact fixed-count Jaccard tends to k / (2 - k) as n grows
    assert table.loc["layer0", "jaccard"] == pytest.approx(1 / 7, abs=2e-3)


def test_closed_form_against_sampled_random_masks():
    masks = fixed_count_masks(3, SIZES, density=0.3, seed=1)
    expected = random_baseline(masks).set_index("layer")
    samples = random_baseline_samples(masks, n_samples=240, random_state=2)
    n_pairs = 240 * 239 // 2
    assert len(samples) == n_pairs * len(baselines.METRICS) * (len(SIZES) + 1)
    observed = samples.groupby(["layer", "metric"])["value"].agg(["mean", "std"])
    for layer, metric in observed.index:
        mean, std = observed.loc[(layer, metric)]
        column = {"hamming_norm": "matching"}.get(metric, metric)   # the same spread
        expected_std = expected.loc[layer, f"{column}_std"]
        expected_mean = expected.loc[layer, metric]
        assert abs(mean - expected_mean) <= 5 * expected_std / np.sqrt(n_pairs) + 1e-12, (layer, metric)
        assert std == pytest.approx(expected_std, rel=0.05, abs=1e-12), (layer, metric)


def test_random_masks_keep_layout_and_per_layer_counts():
    masks = fixed_count_masks(3, SIZES, density=0.4, seed=3)
    sampled = random_masks(masks, n_masks=7, random_state=0)
    assert sampled.same_layout(masks) and len(sampled) == 7
    source_rows = [0, 1, 2, 0, 1, 2, 0]
    expected_counts = masks.popcounts(per_layer=True)[source_rows]
    np.testing.assert_array_equal(sampled.popcounts(per_layer=True), expected_counts)
    again = random_masks(masks, n_masks=7, random_state=0)
    np.testing.assert_array_equal(sampled.bits, again.bits)


def test_with_baseline_columns_and_z_of_random_masks():
    masks = fixed_count_masks(120, SIZES, density=0.5, seed=4)
    table = with_baseline(distances(masks, metric=["hamming", "matching", "jaccard"], per_layer=True), masks)
    expected = random_baseline(masks).set_index("layer")
    for metric in ("hamming", "matching", "jaccard"):
        rows = table[table["metric"] == metric]
        expected_baseline = expected.loc[rows["layer"], metric].to_numpy()
        np.testing.assert_allclose(rows["baseline"], expected_baseline, rtol=1e-12)
        np.testing.assert_allclose(rows["ratio_to_chance"], rows["value"] / rows["baseline"])
    z = table.pivot_table(index=["mask_a", "mask_b", "layer"], columns="metric", values="z")
    np.testing.assert_allclose(z["hamming"], z["jaccard"], atol=1e-9)
    np.testing.assert_allclose(z["hamming"], z["matching"], atol=1e-9)
    whole = table[(table["metric"] == "hamming") & (table["layer"] == "all")]["z"]
    assert abs(whole.mean()) < 0.1 and whole.std() == pytest.approx(1.0, abs=0.1)
    assert table[table["layer"] == "layer3"]["z"].isna().all()   # one bit, none kept: no spread


def test_with_baseline_flags_planted_overlap():
    masks = fixed_count_masks(10, [2000], density=0.5, seed=5)
    bits = masks.bits.copy()
    bits[1] = bits[0]                                          # two identical masks
    twins = MaskSet(bits, masks.layers)
    table = with_baseline(distances(twins, metric="jaccard"), twins)
    twin = table[(table["mask_a"] == 0) & (table["mask_b"] == 1)].iloc[0]
    assert twin["value"] == 1.0 and twin["z"] > 40 and twin["ratio_to_chance"] == pytest.approx(3, rel=0.01)


def test_with_baseline_cross_run_and_unequal_counts():
    a = fixed_count_masks(4, SIZES, density=0.2, seed=6)
    b = fixed_count_masks(5, SIZES, density=0.6, seed=7)
    table = with_baseline(distances(a, b, metric="matching", per_layer=True), a, b)
    k_a, k_b = 0.2, 0.6
    layer0 = table[table["layer"] == "layer0"]
    np.testing.assert_allclose(layer0["baseline"], k_a * k_b + (1 - k_a) * (1 - k_b), rtol=1e-12)
    with pytest.raises(UserError, match="not in the mask set"):
        with_baseline(distances(a, b, metric="matching"), a, a.subset([0, 1]))


def test_random_baseline_of_masks_with_differing_counts_averages_over_pairs():
    rng = np.random.default_rng(8)
    matrix = rng.random((30, 400)) < rng.uniform(0.1, 0.9, size=(30, 1))
    masks = MaskSet.from_bool(matrix)
    table = random_baseline(masks).set_index("layer")
    observed = with_baseline(distances(masks, metric="matching"), masks)
    assert table.loc["all", "matching"] == pytest.approx(observed["baseline"].mean(), rel=1e-12)
