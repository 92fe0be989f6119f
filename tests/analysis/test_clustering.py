"""Clustering recovers planted structure, finds none in random masks, and the random-mask test tells the two
apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.cluster import hierarchy
from sklearn.metrics import adjusted_rand_score

from masklab.analysis import clustering as C
from masklab.analysis.distances import distances
from masklab.errors import UserError
from masklab.store.bits import MaskSet

N_PER, N_CENTRES, N_BITS, FLIP = 10, 3, 2000, 0.05
SIZES = [300, 1700]


def planted(seed: int = 0) -> tuple[MaskSet, np.ndarray]:
    """30 masks: noisy copies (5% of bits flipped) of 3 random centres, ids shuffled against the truth."""
    rng = np.random.default_rng(seed)
    centres = rng.random((N_CENTRES, N_BITS)) < 0.5
    truth = np.repeat(np.arange(N_CENTRES), N_PER)
    rng.shuffle(truth)
    bits = centres[truth] ^ (rng.random((len(truth), N_BITS)) < FLIP)
    return MaskSet.from_bool(bits, layer_sizes=SIZES, ids=np.arange(100, 100 + len(truth))), truth


def random_masks(seed: int = 1, n: int = 30) -> MaskSet:
    rng = np.random.default_rng(seed)
    return MaskSet.from_bool(rng.random((n, N_BITS)) < 0.5, layer_sizes=SIZES)


@pytest.fixture(scope="module")
def planted_square():
    masks, truth = planted()
    return distances(masks, metric="hamming_norm", form="square"), truth


@pytest.fixture(scope="module")
def random_square():
    return distances(random_masks(), metric="hamming_norm", form="square")


def test_hierarchical_and_hdbscan_recover_planted_clusters(planted_square):
    square, truth = planted_square
    labels = C.cluster_masks(square)
    assert list(labels.columns) == ["mask_id", "cluster_average", "cluster_ward", "cluster_hdbscan"]
    assert labels["mask_id"].tolist() == square.index.tolist()
    for column in ("cluster_average", "cluster_ward"):
        assert labels[column].nunique() == 3, column  # k chosen by silhouette
        assert adjusted_rand_score(truth, labels[column]) == 1.0, column
    hdb = labels["cluster_hdbscan"].to_numpy()
    assert len(set(hdb[hdb >= 0])) == 3 and (hdb >= 0).all()
    assert adjusted_rand_score(truth, hdb) == 1.0
    # labels merge into a mask table on mask_id
    table = pd.DataFrame({"mask_id": square.index[::-1], "test_acc": 0.9})
    merged = table.merge(labels, on="mask_id")
    assert len(merged) == len(table) and merged["cluster_ward"].notna().all()


def test_given_k_and_summary(planted_square):
    square, truth = planted_square
    two = C.hierarchical(square, "average", k=2)
    assert two["cluster_average"].nunique() == 2
    assert adjusted_rand_score(truth, two["cluster_average"]) < 1.0
    summary = C.cluster_summary(square, C.cluster_masks(square))
    assert summary["method"].tolist() == ["average", "ward", "hdbscan"]
    assert (summary["n_clusters"] == 3).all() and (summary["n_noise"] == 0).all()
    assert (summary["silhouette"] > 0.7).all()
    assert summary.set_index("method").loc["average", "cophenetic"] > 0.95
    curve = C.silhouette_curve(square, "ward")
    assert curve["k"].tolist() == list(range(2, 11))
    assert int(curve.loc[curve["silhouette"].idxmax(), "k"]) == 3


def test_ward_runs_on_euclidean_distances(planted_square):
    square, _ = planted_square
    z = C.linkage_matrix(square, "ward", optimal=False)
    expected = hierarchy.linkage(np.sqrt(square.to_numpy()[np.triu_indices(len(square), 1)]), "ward")
    np.testing.assert_allclose(z, expected)
    # sqrt of Hamming counts is the Euclidean distance between the 0/1 vectors: the same tree up to scale
    masks, _ = planted()
    counts = distances(masks, metric="hamming", form="square").to_numpy().astype(float)
    z_counts = C.linkage_matrix(counts, "ward", optimal=False)
    np.testing.assert_allclose(z_counts[:, 2], z[:, 2] * np.sqrt(N_BITS), rtol=1e-9)
    np.testing.assert_array_equal(z_counts[:, :2], z[:, :2])


def test_dendrogram_order_groups_clusters_and_labels_follow_it(planted_square):
    square, truth = planted_square
    order = C.dendrogram_order(square)
    assert sorted(order.tolist()) == sorted(square.index.tolist())
    by_id = dict(zip(square.index, truth))
    runs = [by_id[i] for i in order]
    assert sum(a != b for a, b in zip(runs, runs[1:])) == 2  # each planted cluster is one contiguous block
    z = C.linkage_matrix(square)
    assert np.array_equal(square.index.to_numpy()[hierarchy.leaves_list(z)], order)
    labels = C.cluster_masks(square).set_index("mask_id")["cluster_average"]
    assert labels.loc[order].drop_duplicates().tolist() == [0, 1, 2]  # numbered along the heatmap


def test_random_masks_have_no_structure(random_square):
    stats = C.structure_statistics(random_square)
    assert abs(stats["silhouette"]) < 0.1
    labels = C.cluster_masks(random_square, methods=("hdbscan",))
    assert (labels["cluster_hdbscan"] == -1).mean() > 0.5  # mostly noise


# ---- HDBSCAN: scikit-learn's, on the precomputed distances, numbered in leaf order ---------------------------
def _line(points):
    points = np.asarray(points, dtype=np.float64)
    return np.abs(points[:, None] - points[None, :])


def test_hdbscan_finds_dense_groups_and_leaves_an_outlier_as_noise():
    d = _line([5.0, 5.1, 5.2, 5.3, 0.0, 0.1, 0.2, 0.3, 20.0])
    labels = C.hdbscan(d, min_cluster_size=3)["cluster_hdbscan"].tolist()
    # two groups of four and noise; cluster 0 holds the first leaf of the average-linkage tree
    leaves = C.dendrogram_order(d).tolist()
    first_group = 0 if leaves.index(0) < leaves.index(4) else 1
    assert labels == [first_group] * 4 + [1 - first_group] * 4 + [-1]


def test_hdbscan_default_min_cluster_size_is_max_2_min_5_n_over_3():
    """16 points in four tight groups of four: too small for the default size 5 (all one noisy blob, no
    single-cluster answer: all noise), four clusters when 4 points may make one."""
    d = _line(np.repeat([0.0, 10.0, 20.0, 30.0], 4) + np.tile([0.0, 0.1, 0.2, 0.3], 4))
    assert (C.hdbscan(d)["cluster_hdbscan"] == -1).all()
    four = C.hdbscan(d, min_cluster_size=4)["cluster_hdbscan"].to_numpy()
    assert four.tolist() == np.repeat(four[::4], 4).tolist() and sorted(set(four)) == [0, 1, 2, 3]
    # at N = 6 the default is 2: three pairs are three clusters
    pairs = C.hdbscan(_line([0.0, 0.1, 10.0, 10.1, 20.0, 20.1]))["cluster_hdbscan"].to_numpy()
    assert len(set(pairs)) == 3 and (pairs[::2] == pairs[1::2]).all()


def test_hdbscan_of_fewer_than_four_masks_is_all_noise_and_the_input_is_left_alone():
    for n in (1, 2, 3):
        assert (C.hdbscan(_line(np.arange(n)))["cluster_hdbscan"] == -1).all()
    d = _line(np.r_[np.zeros(5), np.ones(5) * 3, 9.0])
    before = d.copy()
    C.hdbscan(d, min_cluster_size=2, min_samples=2)
    np.testing.assert_array_equal(d, before)


def test_structure_vs_random_separates_planted_from_random():
    masks, _ = planted()
    test = C.structure_vs_random(masks, n_random=19, random_state=0)
    summary = test.summary.set_index("statistic")
    assert summary.loc["silhouette", "p_value"] == pytest.approx(0.05)
    assert summary.loc["cophenetic", "p_value"] == pytest.approx(0.05)
    assert summary.loc["silhouette", "observed"] > summary.loc["silhouette", "random_max"]
    assert (test.samples["source"] == "random").sum() == 2 * 19
    null = C.structure_vs_random(random_masks(), n_random=19, random_state=0).summary.set_index("statistic")
    assert null.loc["silhouette", "p_value"] > 0.1  # uniform under the null; this seed gives 0.2
    assert null.loc["silhouette", "random_min"] <= null.loc["silhouette", "observed"] \
        <= null.loc["silhouette", "random_max"]


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="square"):
        C.cluster_masks(np.zeros((3, 4)))
    with pytest.raises(UserError, match="diagonal"):
        C.cluster_masks(np.ones((3, 3)))
    with pytest.raises(UserError, match="symmetric"):
        C.cluster_masks(np.array([[0, 1, 2], [1, 0, 1], [3, 1, 0]]))
    with pytest.raises(UserError, match="linkage method"):
        C.linkage_matrix(np.zeros((3, 3)), "median")


# ---- the structure test's resolution, effect size and wording (issue 16) -------------------------------------
def test_structure_test_resolves_p_to_one_in_a_hundred():
    masks, _ = planted()
    test = C.structure_vs_random(masks, random_state=0)   # the default: 99 random sets
    summary = test.summary.set_index("statistic")
    for stat in ("silhouette", "cophenetic"):
        assert summary.loc[stat, "n_random"] == 99 and summary.loc[stat, "n_masks"] == len(masks)
        assert summary.loc[stat, "p_value"] == pytest.approx(0.01)    # no random set reaches planted masks
        assert summary.loc[stat, "p_floor"] == pytest.approx(0.01)
    assert test.finds_structure and test.verdict() == "strong cluster structure"
    assert "p = 0.01 (the floor for 99 random sets" in test.describe()


def test_effect_size_is_observed_minus_random_mean_in_random_sd():
    masks, _ = planted()
    test = C.structure_vs_random(masks, n_random=30, random_state=1)
    samples = test.samples
    for stat, row in test.summary.set_index("statistic").iterrows():
        rand = samples[(samples["source"] == "random") & (samples["statistic"] == stat)]["value"].to_numpy()
        observed = samples[(samples["source"] == "mask") & (samples["statistic"] == stat)]["value"].iloc[0]
        expected = (observed - rand.mean()) / rand.std(ddof=1)
        assert row["effect_sd"] == pytest.approx(expected) and row["z"] == pytest.approx(expected)
        assert row["p_value"] == pytest.approx((1 + (rand >= observed).sum()) / (1 + len(rand)))


def test_p_values_of_random_masks_are_roughly_uniform_and_never_below_the_floor():
    p = []
    for seed in range(12):
        test = C.structure_vs_random(random_masks(seed=100 + seed, n=12), n_random=99, random_state=seed)
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
    def fake(p: float, silhouette: float, n_random: int = 99) -> C.StructureTest:
        row = {"statistic": "silhouette", "observed": silhouette, "random_mean": 0.004, "random_std": 0.0003,
               "random_min": 0.003, "random_max": 0.005, "effect_sd": 2.6, "z": 2.6, "p_value": p,
               "p_floor": 1 / (1 + n_random), "n_random": n_random, "n_masks": 16}
        return C.StructureTest(pd.DataFrame([row]), pd.DataFrame())

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
    assert C.format_p(0.1, 9) == "p = 0.10 (the floor for 9 random sets: none reached the masks)"
    assert C.format_p(0.123, 999) == "p = 0.123"


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
            assert C._silhouette(d, labels) == pytest.approx(expected, abs=1e-12)
        else:
            assert np.isnan(C._silhouette(d, labels))
        z = hierarchy.linkage(d[np.triu_indices(n, 1)], "average")
        cuts = C._MaxclustCuts(z)
        for k in range(1, n + 1):
            expected = hierarchy.fcluster(z, k, "maxclust")
            assert adjusted_rand_score(expected, cuts.labels(k)) == 1.0 or len(np.unique(expected)) == 1
            assert len(np.unique(cuts.labels(k))) == len(np.unique(expected))


def test_structure_test_on_a_subset_of_a_large_run():
    masks, _ = planted()
    test = C.structure_vs_random(masks, n_random=5, max_masks=12, random_state=0)
    assert (test.summary["n_masks"] == 12).all() and (test.summary["n_random"] == 5).all()
