"""The random baseline as tables (masklab.analysis.baselines): closed forms, exact forms against sampled random
masks, the baseline beside every pair (with_baseline) and the distance from chance (vs_chance)."""

from __future__ import annotations

import numpy as np
import pytest

import masklab.analysis.baselines as baselines
from masklab.analysis import METRICS, distances, random_baseline, random_baseline_samples, random_masks, with_baseline
from masklab.errors import UserError
from masklab.store.bits import MaskSet

SIZES = [100, 37, 500, 1, 64]


def test_fixed_count_closed_forms(fixed_count_masks):
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


def test_closed_form_against_sampled_random_masks(fixed_count_masks):
    masks = fixed_count_masks(3, SIZES, density=0.3, seed=1)
    expected = random_baseline(masks).set_index("layer")
    samples = random_baseline_samples(masks, n_samples=240, random_state=2)
    n_pairs = 240 * 239 // 2
    assert len(samples) == n_pairs * len(METRICS) * (len(SIZES) + 1)
    observed = samples.groupby(["layer", "metric"])["value"].agg(["mean", "std"])
    for layer, metric in observed.index:
        mean, std = observed.loc[(layer, metric)]
        column = {"hamming_norm": "matching"}.get(metric, metric)   # the same spread
        expected_std = expected.loc[layer, f"{column}_std"]
        expected_mean = expected.loc[layer, metric]
        assert abs(mean - expected_mean) <= 5 * expected_std / np.sqrt(n_pairs) + 1e-12, (layer, metric)
        assert std == pytest.approx(expected_std, rel=0.05, abs=1e-12), (layer, metric)


def test_with_baseline_columns_and_z_of_random_masks(fixed_count_masks):
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


def test_with_baseline_flags_planted_overlap(fixed_count_masks):
    masks = fixed_count_masks(10, [2000], density=0.5, seed=5)
    bits = masks.bits.copy()
    bits[1] = bits[0]                                          # two identical masks
    twins = MaskSet(bits, masks.layers)
    table = with_baseline(distances(twins, metric="jaccard"), twins)
    twin = table[(table["mask_a"] == 0) & (table["mask_b"] == 1)].iloc[0]
    assert twin["value"] == 1.0 and twin["z"] > 40 and twin["ratio_to_chance"] == pytest.approx(3, rel=0.01)


def test_with_baseline_cross_run_and_unequal_counts(fixed_count_masks):
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


# ---- distance from chance (issue 16) -------------------------------------------------------------------------


def test_vs_chance_against_the_closed_form_on_a_small_case():
    # 5 masks of one 8-bit layer with 4 kept: the null intersection is hypergeometric(8, 4, 4), mean 2,
    # variance 4 * 4 * 4 * 4 / (64 * 7); matching = 1 - (8 - 2 I) / 8 = I / 4
    rows = [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0, 0], [1, 1, 0, 1, 0, 1, 0, 0],
            [1, 0, 1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 0, 0, 0, 1]]
    masks = MaskSet.from_bool(np.array(rows, dtype=bool))
    table = with_baseline(distances(masks, metric=["matching", "jaccard"]), masks)
    result = baselines.vs_chance(table).set_index("metric")
    sd_i = np.sqrt(4 * 4 * 4 * 4 / (64 * 7))
    values = table[table["metric"] == "matching"]["value"].to_numpy()
    match = result.loc["matching"]
    assert match["n_masks"] == 5 and match["n_pairs"] == 10 and match["chance"] == pytest.approx(0.5)
    assert match["chance_sd"] == pytest.approx(sd_i / 4)
    assert match["z_vs_chance"] == pytest.approx((values.mean() - 0.5) / (sd_i / 4))
    assert match["chance_se"] == pytest.approx(sd_i / 4 / np.sqrt(10))
    assert match["z_mean_vs_chance"] == pytest.approx((values.mean() - 0.5) / (sd_i / 4 / np.sqrt(10)))
    # jaccard: E and sd from the hypergeometric pmf, J = I / (8 - I)
    from scipy.stats import hypergeom

    i = np.arange(0, 5)
    p = hypergeom.pmf(i, 8, 4, 4)
    mean_j = (p * i / (8 - i)).sum()
    sd_j = np.sqrt((p * (i / (8 - i) - mean_j) ** 2).sum())
    jac = result.loc["jaccard"]
    jvalues = table[table["metric"] == "jaccard"]["value"].to_numpy()
    assert jac["chance"] == pytest.approx(mean_j) and jac["chance_sd"] == pytest.approx(sd_j)
    assert jac["z_vs_chance"] == pytest.approx((jvalues.mean() - mean_j) / sd_j)
    # the jackknife over masks, leave one mask (and its 4 pairs) out
    pairs = table[table["metric"] == "matching"]
    loo = [pairs[(pairs["mask_a"] != m) & (pairs["mask_b"] != m)]["value"].mean() for m in range(5)]
    assert match["se_masks"] == pytest.approx(np.sqrt(4 / 5 * ((np.array(loo) - np.mean(loo)) ** 2).sum()))


def test_chance_se_is_the_spread_of_the_mean_over_pairs_of_random_masks(fixed_count_masks):
    masks = fixed_count_masks(6, [1000], density=0.5, seed=10)
    table = with_baseline(distances(masks, metric="matching"), masks)
    expected = baselines.vs_chance(table).iloc[0]
    means = [distances(random_masks(masks, random_state=s), metric="matching")["value"].mean() for s in range(400)]
    # the mean over 15 pairs that share masks has sd = sd(one pair) / sqrt(15): pairs are uncorrelated
    assert np.std(means, ddof=1) == pytest.approx(expected["chance_se"], rel=0.12)
    assert np.mean(means) == pytest.approx(expected["chance"], abs=4 * expected["chance_se"] / np.sqrt(400))


def test_vs_chance_of_planted_overlap_and_of_cross_tables(fixed_count_masks):
    masks = fixed_count_masks(8, [2000], density=0.5, seed=11)
    bits = masks.bits.copy()
    bits[1] = bits[0]
    twins = MaskSet(bits, masks.layers)
    row = baselines.vs_chance(with_baseline(distances(twins, metric="matching"), twins)).iloc[0]
    assert row["z_vs_chance"] > 1 and row["z_mean_vs_chance"] == pytest.approx(row["z_vs_chance"] * np.sqrt(28))
    other = fixed_count_masks(3, [2000], density=0.5, seed=12)
    cross = baselines.vs_chance(with_baseline(distances(masks, other, metric="matching"), masks, other), cross=True)
    assert cross.iloc[0]["n_masks"] == 11 and cross.iloc[0]["n_pairs"] == 24
    with pytest.raises(UserError, match="with_baseline"):
        baselines.vs_chance(distances(masks, metric="matching"))


