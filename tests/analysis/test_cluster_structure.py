"""The structure test (masklab.analysis.cluster_structure): planted clusters against random masks of the same
per-layer counts, the p-value's resolution and uniformity under the null, the effect size and the wording."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.cluster import hierarchy
from sklearn.metrics import adjusted_rand_score

from masklab.analysis import cluster_structure as S
from masklab.analysis import clustering as C
from masklab.analysis.distances import distances


def test_random_masks_have_no_structure(coin_masks):
    random_square = distances(coin_masks(), metric="hamming_norm", form="square")
    stats = S.structure_statistics(random_square)
    assert abs(stats["silhouette"]) < 0.1
    labels = C.cluster_masks(random_square, methods=("hdbscan",))
    assert (labels["cluster_hdbscan"] == -1).mean() > 0.5  # mostly noise


def test_structure_vs_random_separates_planted_from_random(planted, coin_masks):
    masks, _ = planted()
    test = S.structure_vs_random(masks, n_random=19, random_state=0)
    summary = test.summary.set_index("statistic")
    assert summary.loc["silhouette", "p_value"] == pytest.approx(0.05)
    assert summary.loc["cophenetic", "p_value"] == pytest.approx(0.05)
    assert summary.loc["silhouette", "observed"] > summary.loc["silhouette", "random_max"]
    assert (test.samples["source"] == "random").sum() == 2 * 19
    null = S.structure_vs_random(coin_masks(), n_random=19, random_state=0).summary.set_index("statistic")
    assert null.loc["silhouette", "p_value"] > 0.1  # uniform under the null; this seed gives 0.2
    assert null.loc["silhouette", "random_min"] <= null.loc["silhouette", "observed"] \
        <= null.loc["silhouette", "random_max"]


# ---- the structure test's resolution, effect size and wording (issue 16) -------------------------------------
def test_structure_test_resolves_p_to_one_in_a_hundred(planted):
    masks, _ = planted()
    test = S.structure_vs_random(masks, random_state=0)   # the default: 99 random sets
    summary = test.summary.set_index("statistic")
    for stat in ("silhouette", "cophenetic"):
        assert summary.loc[stat, "n_random"] == 99 and summary.loc[stat, "n_masks"] == len(masks)
        assert summary.loc[stat, "p_value"] == pytest.approx(0.01)    # no random set reaches planted masks
        assert summary.loc[stat, "p_floor"] == pytest.approx(0.01)
    assert test.finds_structure and test.verdict() == "strong cluster structure"
    assert "p = 0.01 (the floor for 99 random sets" in test.describe()


def test_effect_size_is_observed_minus_random_mean_in_random_sd(planted):
    masks, _ = planted()
    test = S.structure_vs_random(masks, n_random=30, random_state=1)
    samples = test.samples
    for stat, row in test.summary.set_index("statistic").iterrows():
        rand = samples[(samples["source"] == "random") & (samples["statistic"] == stat)]["value"].to_numpy()
        observed = samples[(samples["source"] == "mask") & (samples["statistic"] == stat)]["value"].iloc[0]
        expected = (observed - rand.mean()) / rand.std(ddof=1)
        assert row["effect_sd"] == pytest.approx(expected) and row["z"] == pytest.approx(expected)
        assert row["p_value"] == pytest.approx((1 + (rand >= observed).sum()) / (1 + len(rand)))


def test_p_values_of_random_masks_are_roughly_uniform_and_never_below_the_floor(coin_masks):
    p = []
    for seed in range(12):
        test = S.structure_vs_random(coin_masks(seed=100 + seed, n=12), n_random=99, random_state=seed)
        row = test.row("silhouette")
        assert row["p_value"] >= 1 / 100 - 1e-12
        assert not test.finds_structure
        p.append(row["p_value"])
    p = np.sort(p)
    # Kolmogorov-Smirnov distance to the uniform below its 1% critical value for 12 draws (about 0.45); these
    # seeds give 0.13
    ks = np.max(np.abs(p - (np.arange(1, 13) - 0.5) / 12))
    assert ks < 0.45, p
    assert 0.2 < p.mean() < 0.8 and len(set(p)) > 6


def test_verdict_words_what_the_numbers_carry():
    def fake(p: float, silhouette: float, n_random: int = 99) -> S.StructureTest:
        row = {"statistic": "silhouette", "observed": silhouette, "random_mean": 0.004, "random_std": 0.0003,
               "random_min": 0.003, "random_max": 0.005, "effect_sd": 2.6, "z": 2.6, "p_value": p,
               "p_floor": 1 / (1 + n_random), "n_random": n_random, "n_masks": 16}
        return S.StructureTest(pd.DataFrame([row]), pd.DataFrame())

    small = fake(0.02, 0.0048)
    assert small.verdict() == "small but detectable" and not small.finds_structure
    text = small.describe()
    assert text.startswith("small but detectable: best silhouette 0.00480 vs 0.00400 (sd 0.00030)")
    assert "+2.6 sd" in text and "p = 0.02" in text and "16 masks, 99 random sets" in text
    assert fake(0.30, 0.0048).verdict() == "not detected"
    assert fake(0.01, 0.4).verdict() == "weak cluster structure" and fake(0.01, 0.4).finds_structure
    assert fake(0.01, 0.6).verdict() == "reasonable cluster structure"
    assert fake(0.049, 0.9).verdict() == "strong cluster structure"
    assert not fake(0.06, 0.9).finds_structure            # large silhouette, but not beyond chance
    assert S.format_p(0.1, 9) == "p = 0.10 (the floor for 9 random sets: none reached the masks)"
    assert S.format_p(0.123, 999) == "p = 0.123"


def test_fast_silhouette_and_cuts_match_scikit_learn_and_scipy():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(4, 25))
        x = rng.integers(0, 3, (n, 3)).astype(float)          # ties in distances and merge heights
        d = np.abs(x[:, None] - x[None]).sum(-1)
        labels = rng.integers(-1, 4, n)
        keep = labels >= 0
        if 2 <= len(np.unique(labels[keep])) <= keep.sum() - 1:
            expected = silhouette_score(d[np.ix_(keep, keep)], labels[keep], metric="precomputed")
            assert C.matrix_silhouette(d, labels) == pytest.approx(expected, abs=1e-12)
        else:
            assert np.isnan(C.matrix_silhouette(d, labels))
        z = hierarchy.linkage(d[np.triu_indices(n, 1)], "average")
        cuts = S._MaxclustCuts(z)
        for k in range(1, n + 1):
            expected = hierarchy.fcluster(z, k, "maxclust")
            assert adjusted_rand_score(expected, cuts.labels(k)) == 1.0 or len(np.unique(expected)) == 1
            assert len(np.unique(cuts.labels(k))) == len(np.unique(expected))


def test_structure_test_on_a_subset_of_a_large_run(planted):
    masks, _ = planted()
    test = S.structure_vs_random(masks, n_random=5, max_masks=12, random_state=0)
    assert (test.summary["n_masks"] == 12).all() and (test.summary["n_random"] == 5).all()
