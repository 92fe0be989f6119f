"""Clustering recovers planted structure and finds none in random masks (whether found clusters mean anything
is tests/analysis/test_cluster_structure.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.cluster import hierarchy
from sklearn.metrics import adjusted_rand_score

from masklab.analysis import clustering as C
from masklab.analysis.distances import distances
from masklab.errors import UserError


@pytest.fixture(scope="module")
def planted_square(planted):
    masks, truth = planted()
    return distances(masks, metric="hamming_norm", form="square"), truth


@pytest.fixture(scope="module")
def random_square(coin_masks):
    return distances(coin_masks(), metric="hamming_norm", form="square")


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


def test_ward_runs_on_euclidean_distances(planted_square, planted):
    square, _ = planted_square
    z = C.linkage_matrix(square, "ward", optimal=False)
    expected = hierarchy.linkage(np.sqrt(square.to_numpy()[np.triu_indices(len(square), 1)]), "ward")
    np.testing.assert_allclose(z, expected)
    # sqrt of Hamming counts is the Euclidean distance between the 0/1 vectors: the same tree up to scale
    masks, _ = planted()
    counts = distances(masks, metric="hamming", form="square").to_numpy().astype(float)
    z_counts = C.linkage_matrix(counts, "ward", optimal=False)
    np.testing.assert_allclose(z_counts[:, 2], z[:, 2] * np.sqrt(masks.n_bits), rtol=1e-9)
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


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="square"):
        C.cluster_masks(np.zeros((3, 4)))
    with pytest.raises(UserError, match="diagonal"):
        C.cluster_masks(np.ones((3, 3)))
    with pytest.raises(UserError, match="symmetric"):
        C.cluster_masks(np.array([[0, 1, 2], [1, 0, 1], [3, 1, 0]]))
    with pytest.raises(UserError, match="linkage method"):
        C.linkage_matrix(np.zeros((3, 3)), "median")
