"""Embeddings separate planted clusters and keep neighbourhoods (UMAP is compiled once per module: slow)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
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


# ---- the method that fits N (issue 16) ------------------------------------------------------------------------
def test_auto_embedding_is_mds_below_fifty_masks_and_says_so():
    assert E.choose_method(16)[0] == "mds" and "16 masks are fewer than 50" in E.choose_method(16)[1]
    assert E.choose_method(49)[0] == "mds" and E.choose_method(50)[0] == "umap"
    assert E.choose_method(16, "umap") == ("umap", "")  # asked for by name: given
    with pytest.raises(UserError, match="embedding method"):
        E.choose_method(16, "pca")
    masks, _ = planted()
    coords = E.embed(masks)  # 30 masks, method "auto"
    assert (coords["method"] == "mds").all()


def test_auto_embedding_of_few_masks_never_imports_umap(tmp_path):
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom masklab.analysis.embedding import embed\n"
            "x = np.random.default_rng(0).random((16, 4))\n"
            "d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))\n"
            "assert (embed(d)['method'] == 'mds').all()\n"
            "assert 'umap' not in sys.modules and 'pynndescent' not in sys.modules\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_umap_kernels_get_an_on_disk_cache(umap_coords):
    import umap.layouts
    import umap.umap_
    from numba.core.caching import NullCache

    for dispatcher in (umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths,
                       umap.layouts._nb_optimize_layout_euclidean_single_epoch):
        assert not isinstance(dispatcher._cache, NullCache), dispatcher
    # the parallel layout kernel (same source) is left alone
    assert isinstance(umap.layouts._nb_optimize_layout_euclidean_single_epoch_parallel._cache, NullCache)


# ---- MDS: scikit-learn's metric MDS (SMACOF) from the classical start ---------------------------------------
def _hamming_matrix(rng, n, n_bits=400):
    bits = rng.random((n, n_bits)) < rng.uniform(0.1, 0.9)
    return (bits[:, None] != bits[None]).mean(-1)


def _euclidean(xy):
    return np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))


def _stress(xy, d):
    return ((_euclidean(xy) - d) ** 2).sum() / 2


def _classical_start(d):
    """Torgerson's classical MDS by its definition: top-2 eigenvectors of -J D^2 J / 2, scaled by sqrt(eigenvalue)."""
    n = len(d)
    j = np.eye(n) - 1.0 / n
    w, u = np.linalg.eigh(-j @ (d ** 2) @ j / 2)
    return u[:, ::-1][:, :2] * np.sqrt(np.maximum(w[::-1][:2], 0.0))


@pytest.mark.parametrize("seed", range(4))
def test_mds_recovers_planar_points_exactly(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(int(rng.integers(4, 30)), 2)) * rng.uniform(0.1, 10)
    d = _euclidean(points)
    xy = E.embed(d, "mds")[["x", "y"]].to_numpy()
    np.testing.assert_allclose(_euclidean(xy), d, atol=1e-6 * d.max())


def _smacof(d, max_iter=300, eps=1e-6):
    """Metric MDS by its definition: Guttman transforms X <- B(X) X / N from the classical start (coincident
    points at distance 1e-5), stopping when the raw stress falls by less than eps * sum_{i<j} d_ij(X)^2."""
    n = len(d)
    x = _classical_start(d)
    dist, old = _euclidean(x), None
    for _ in range(max_iter):
        dist[dist == 0] = 1e-5
        b = -d / dist
        b[np.diag_indices(n)] -= b.sum(axis=1)
        x = b @ x / n
        dist = _euclidean(x)
        stress = ((dist - d) ** 2).sum() / 2
        if old is not None and (old - stress) / ((dist ** 2).sum() / 2) < eps:
            break
        old = stress
    return x


@pytest.mark.parametrize("seed", range(6))
def test_mds_is_smacof_from_the_classical_start(seed):
    """embed(method="mds") is SMACOF from Torgerson's start (compared through the pairwise distances of the
    result, which no reflection of the start changes), and lowers the stress of that start."""
    rng = np.random.default_rng(seed)
    d = _hamming_matrix(rng, int(rng.integers(4, 60)))
    xy = E.embed(d, "mds")[["x", "y"]].to_numpy()
    np.testing.assert_allclose(_euclidean(xy), _euclidean(_smacof(d)), rtol=0, atol=1e-9 * d.max())
    assert _stress(xy, d) < _stress(_classical_start(d), d)


def test_mds_is_deterministic_and_ignores_random_state():
    d = _hamming_matrix(np.random.default_rng(7), 20)
    a = E.embed(d, "mds", random_state=0)
    pd.testing.assert_frame_equal(a, E.embed(d, "mds", random_state=123))
