"""Embeddings separate planted clusters and keep neighbourhoods (UMAP is compiled once per module: slow)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.manifold import trustworthiness

from masklab.analysis import embedding as E
from masklab.analysis.distances import distances
from masklab.errors import UserError
from masklab.store.bits import MaskSet

N_PER, N_BITS = 10, 2000


def planted(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.random((3, N_BITS)) < 0.5
    truth = np.repeat(np.arange(3), N_PER)
    rng.shuffle(truth)
    bits = centres[truth] ^ (rng.random((len(truth), N_BITS)) < 0.05)
    return MaskSet.from_bool(bits, layer_sizes=[500, 1500], ids=np.arange(len(truth)) + 10), truth


@pytest.fixture(scope="module")
def data():
    masks, truth = planted()
    return masks, truth, distances(masks, metric="hamming_norm", form="square")


@pytest.fixture(scope="module")
def umap_coords(data):
    _, _, square = data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coords = E.embed(square, "umap", random_state=0)
    return coords, caught


def separation(xy: np.ndarray, truth: np.ndarray) -> float:
    """Smallest distance between cluster centroids over the largest distance of a point to its centroid."""
    centres = np.array([xy[truth == k].mean(axis=0) for k in range(3)])
    spread = max(np.linalg.norm(xy[truth == k] - centres[k], axis=1).max() for k in range(3))
    gap = min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i + 1, 3))
    return gap / spread


def check(coords, square, truth, method):
    assert list(coords.columns) == ["mask_id", "x", "y", "method"]
    assert coords["mask_id"].tolist() == square.index.tolist()
    assert (coords["method"] == method).all()
    xy = coords[["x", "y"]].to_numpy()
    assert np.isfinite(xy).all()
    assert trustworthiness(square.to_numpy(), xy, n_neighbors=5, metric="precomputed") > 0.9
    assert separation(xy, truth) > 1.5


def test_umap_separates_planted_clusters_quietly(data, umap_coords):
    _, truth, square = data
    coords, caught = umap_coords
    check(coords, square, truth, "umap")
    noisy = [str(w.message) for w in caught
             if "precomputed metric" in str(w.message) or "overridden to 1" in str(w.message)]
    assert noisy == []


def test_umap_is_deterministic_and_takes_its_seed(data, umap_coords):
    _, truth, square = data
    again = E.embed(square, "umap", random_state=0)
    np.testing.assert_array_equal(again[["x", "y"]].to_numpy(), umap_coords[0][["x", "y"]].to_numpy())
    other = E.embed(square, "umap", random_state=1, n_neighbors=5)
    assert not np.allclose(other[["x", "y"]].to_numpy(), again[["x", "y"]].to_numpy())
    check(other, square, truth, "umap")


@pytest.mark.parametrize("method", ["mds", "tsne"])
def test_mds_and_tsne_separate_planted_clusters(data, method):
    _, truth, square = data
    coords = E.embed(square, method, random_state=0)
    check(coords, square, truth, method)
    np.testing.assert_allclose(E.embed(square, method, random_state=0)[["x", "y"]], coords[["x", "y"]])


def test_knn_from_matrix_matches_a_full_sort(data):
    _, _, square = data
    matrix = square.to_numpy()
    idx, dist = E.knn_from_matrix(matrix, 6, block_rows=7)
    assert (idx[:, 0] == np.arange(len(matrix))).all() and (dist[:, 0] == 0).all()
    full = np.sort(matrix, axis=1)[:, :6]
    np.testing.assert_allclose(dist, full, rtol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(matrix, idx, axis=1), dist, rtol=1e-6)


def test_embed_with_reference_adds_a_random_cloud(data):
    masks, truth, _ = data
    coords = E.embed_with_reference(masks, n_random=12, method="mds")
    assert coords["source"].tolist() == ["mask"] * 30 + ["random"] * 12
    assert coords["mask_id"].tolist()[:30] == masks.ids.tolist()
    assert coords["mask_id"].tolist()[30:] == list(range(-1, -13, -1))
    xy = coords[["x", "y"]].to_numpy()
    assert separation(xy[:30], truth) > 1.5


def test_bad_input():
    with pytest.raises(UserError, match="at least 3"):
        E.embed(np.zeros((2, 2)))
    with pytest.raises(UserError, match="unknown embedding"):
        E.embed(np.zeros((3, 3)), "pca")
    with pytest.raises(UserError, match="perplexity"):
        E.embed(np.ones((5, 5)) - np.eye(5), "tsne", perplexity=10)
