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


# ---- MDS: our SMACOF is scikit-learn's metric MDS from the classical start -------------------------------
def _hamming_matrix(rng, n, n_bits=400):
    bits = rng.random((n, n_bits)) < rng.uniform(0.1, 0.9)
    return (bits[:, None] != bits[None]).mean(-1)


@pytest.mark.parametrize("seed", range(12))
def test_smacof_equals_scikit_learns_metric_mds_from_the_classical_start(seed):
    from sklearn.manifold import MDS

    if "metric_mds" not in __import__("inspect").signature(MDS).parameters:
        pytest.skip("scikit-learn < 1.8 has no classical-MDS start")
    rng = np.random.default_rng(seed)
    d = _hamming_matrix(rng, int(rng.integers(4, 60)))
    ours, stress, n_iter = E.smacof(d)
    ref = MDS(n_components=2, metric="precomputed", metric_mds=True, init="classical_mds", n_init=1,
              normalized_stress=False).fit(d)
    np.testing.assert_allclose(ours, ref.embedding_, rtol=0, atol=1e-9 * np.abs(ref.embedding_).max())
    assert n_iter == ref.n_iter_
    assert stress == pytest.approx(ref.stress_, rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_classical_mds_equals_scikit_learns_and_recovers_planar_points(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(int(rng.integers(3, 30)), 2)) * rng.uniform(0.1, 10)
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    xy = E.classical_mds(d)
    np.testing.assert_allclose(np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)), d, atol=1e-9 * d.max())
    xy_smacof, stress, _ = E.smacof(d)
    assert stress < 1e-12 * (d ** 2).sum()
    try:
        from sklearn.manifold import ClassicalMDS
    except ImportError:
        return
    hamming = _hamming_matrix(rng, 20)
    np.testing.assert_allclose(E.classical_mds(hamming),
                               ClassicalMDS(metric="precomputed", n_components=2).fit_transform(hamming),
                               rtol=0, atol=1e-9)


def test_smacof_lowers_the_stress_of_its_classical_start():
    d = _hamming_matrix(np.random.default_rng(3), 25)
    start = E.classical_mds(d)
    start_stress = ((np.sqrt(((start[:, None] - start[None]) ** 2).sum(-1)) - d) ** 2).sum() / 2
    _, stress, n_iter = E.smacof(d)
    assert n_iter > 1 and stress < start_stress
