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


# ---- exact pmf, fast random masks, distance from chance (issue 16) ------------------------------------------
@pytest.mark.parametrize("n, count_a, count_b", [(65536, 32768, 32768), (2560, 256, 1280), (100, 99, 3),
                                                 (10, 10, 4), (7, 0, 3), (500, 2, 498)])
def test_intersection_pmf_against_scipy(n, count_a, count_b):
    from scipy.stats import hypergeom

    first, pmf = baselines.intersection_pmf(n, count_a, count_b)
    support = np.arange(first, first + len(pmf))
    expected = hypergeom.pmf(support, n, count_a, count_b)
    np.testing.assert_allclose(pmf, expected / expected.sum(), rtol=1e-9, atol=1e-300)
    assert expected.sum() == pytest.approx(1.0, abs=1e-12)   # the window holds all of the probability


def test_random_masks_are_uniform_over_subsets_of_the_count():
    from math import comb

    from scipy.stats import chi2

    n, c, draws = 7, 3, 35_000
    layout = MaskSet.from_bool(np.zeros((1, n), dtype=bool)).layers
    bits = baselines.random_mask_bits(layout, np.array([[c]]), draws, np.random.default_rng(0))
    assert (np.bitwise_count(bits).sum(axis=1) == c).all()
    _, observed = np.unique(bits[:, 0], return_counts=True)
    assert len(observed) == comb(n, c)
    expected = draws / comb(n, c)
    statistic = ((observed - expected) ** 2 / expected).sum()
    assert chi2.sf(statistic, comb(n, c) - 1) > 0.001


@pytest.mark.parametrize("density", [0.0, 1.0, 0.001, 0.999, 0.1, 0.5, 0.77])
def test_random_masks_have_exact_counts_and_clean_padding(density):
    masks = fixed_count_masks(3, [1000, 130, 64, 1], density=density, seed=9)
    sampled = random_masks(masks, n_masks=9, random_state=1)
    np.testing.assert_array_equal(sampled.popcounts(per_layer=True), masks.popcounts(per_layer=True)[[0, 1, 2] * 3])
    for i in range(9):  # no bit beyond a layer's end
        assert sampled.unpack(i).sum() == sampled.popcounts()[i]
    frequency = np.mean([sampled.unpack(i)[:1000] for i in range(9)], axis=0)
    assert frequency.mean() == pytest.approx(round(density * 1000) / 1000)


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


def test_chance_se_is_the_spread_of_the_mean_over_pairs_of_random_masks():
    masks = fixed_count_masks(6, [1000], density=0.5, seed=10)
    table = with_baseline(distances(masks, metric="matching"), masks)
    expected = baselines.vs_chance(table).iloc[0]
    means = [distances(random_masks(masks, random_state=s), metric="matching")["value"].mean() for s in range(400)]
    # the mean over 15 pairs that share masks has sd = sd(one pair) / sqrt(15): pairs are uncorrelated
    assert np.std(means, ddof=1) == pytest.approx(expected["chance_se"], rel=0.12)
    assert np.mean(means) == pytest.approx(expected["chance"], abs=4 * expected["chance_se"] / np.sqrt(400))


def test_vs_chance_of_planted_overlap_and_of_cross_tables():
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


def test_the_count_kernel_chooses_the_bits_the_numpy_code_does(monkeypatch):
    pytest.importorskip("numba")
    masks = fixed_count_masks(5, [1000, 130, 64], density=0.3, seed=13)
    chosen = []
    kernel_of = baselines._flip_kernel
    monkeypatch.setattr(baselines, "SMALL_FLIP_DRAWS", 0)  # the kernel even for these few draws
    monkeypatch.setattr(baselines, "_flip_kernel", lambda n=None: chosen.append(kernel_of(n)) or chosen[-1])
    compiled = random_masks(masks, n_masks=12, random_state=4).bits
    assert chosen and all(k is not None for k in chosen)
    monkeypatch.setattr(baselines, "_flip_kernel", lambda n=None: None)
    np.testing.assert_array_equal(random_masks(masks, n_masks=12, random_state=4).bits, compiled)
