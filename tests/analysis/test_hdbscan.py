"""`hdbscan_labels` gives exactly scikit-learn's HDBSCAN(metric="precomputed") labels, ties, duplicate points
and all, and `masklab.analysis.clustering` no longer imports scikit-learn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN

from masklab.analysis import clustering as C
from masklab.analysis.distances import distances
from masklab.analysis.hdbscan import hdbscan_labels
from masklab.store.bits import MaskSet

ROOT = Path(__file__).resolve().parents[2]
SEEDS = range(45)
MIN_SAMPLES = (None, None, 1, 2, 3, 5, 8, 10)


def sklearn_labels(d: np.ndarray, min_cluster_size: int, min_samples: int | None) -> np.ndarray:
    return HDBSCAN(metric="precomputed", min_cluster_size=min_cluster_size, min_samples=min_samples,
                   copy=True).fit_predict(d)


def euclidean(x: np.ndarray) -> np.ndarray:
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def blobs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian blobs of random sizes, centres and spreads (one to six blobs)."""
    k = int(rng.integers(1, 7))
    which = rng.choice(k, size=n, p=rng.dirichlet(np.ones(k)))
    centres = rng.uniform(-10, 10, (k, 2))
    spreads = rng.uniform(0.05, 3.0, k)
    return euclidean(centres[which] + rng.normal(size=(n, 2)) * spreads[which, None])


def uniform(rng: np.random.Generator, n: int) -> np.ndarray:
    return euclidean(rng.uniform(size=(n, int(rng.integers(1, 6)))))


def integer(rng: np.random.Generator, n: int) -> np.ndarray:
    """Manhattan distances between points of a small integer grid: integer values, many exact ties."""
    return _manhattan(rng.integers(0, int(rng.integers(2, 6)), (n, 2)))


def _manhattan(x: np.ndarray) -> np.ndarray:
    return np.abs(x[:, None, :] - x[None, :, :]).sum(-1).astype(np.float64)


def hamming(rng: np.random.Generator, n: int) -> np.ndarray:
    """Hamming counts between random 0/1 vectors of a few bits: ties everywhere, duplicates likely."""
    bits = rng.random((n, int(rng.integers(3, 17)))) < rng.uniform(0.2, 0.5)
    return (bits[:, None, :] != bits[None, :, :]).sum(-1).astype(np.float64)


def duplicates(rng: np.random.Generator, n: int) -> np.ndarray:
    """Few distinct points, each repeated, some jittered: zero off-diagonal distances (infinite lambdas)."""
    base = rng.normal(size=(max(1, n // int(rng.integers(2, 9))), 2)) * rng.uniform(0.5, 5.0)
    x = base[rng.integers(0, len(base), n)]
    jitter = rng.random((n, 1)) < 0.3
    return euclidean(x + jitter * rng.normal(scale=0.3, size=(n, 2)))


def masks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normalised Hamming distances of binary masks (noisy copies of a few centres, or plain random), as
    `clustering` computes them."""
    n_bits = 600
    if rng.random() < 0.5:
        centres = rng.random((int(rng.integers(1, 5)), n_bits)) < 0.3
        bits = centres[rng.integers(0, len(centres), n)] ^ (rng.random((n, n_bits)) < rng.uniform(0.01, 0.2))
    else:
        bits = rng.random((n, n_bits)) < rng.uniform(0.05, 0.5)
    mask_set = MaskSet.from_bool(bits, layer_sizes=[200, 400])
    return C.as_square(distances(mask_set, metric="hamming_norm", form="square"))[0]


FAMILIES = {"blobs": blobs, "uniform": uniform, "integer": integer, "hamming": hamming,
            "duplicates": duplicates, "masks": masks}


def case(family: str, seed: int) -> tuple[np.ndarray, int, int | None]:
    """A reproducible (matrix, min_cluster_size, min_samples): N from 3 to 300, mostly under 120."""
    rng = np.random.default_rng([seed, list(FAMILIES).index(family)])
    n = int(rng.integers(3, 121)) if seed % 5 else int(rng.integers(120, 301))
    d = FAMILIES[family](rng, n)
    min_cluster_size = int(rng.integers(2, 11))
    min_samples = MIN_SAMPLES[int(rng.integers(len(MIN_SAMPLES)))]
    if (min_cluster_size if min_samples is None else min_samples) > n:
        min_samples = n
    return d, min_cluster_size, min_samples


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_labels_equal_sklearn(family, seed):
    d, min_cluster_size, min_samples = case(family, seed)
    expected = sklearn_labels(d, min_cluster_size, min_samples)
    got = hdbscan_labels(d, min_cluster_size, min_samples)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_cases_are_not_trivial():
    """The comparisons above cover many clusters, noise, ties and zero distances, not just all-noise."""
    n_clusters, with_noise, tied, zero = [], 0, 0, 0
    for family in FAMILIES:
        for seed in SEEDS:
            d, min_cluster_size, min_samples = case(family, seed)
            labels = hdbscan_labels(d, min_cluster_size, min_samples)
            n_clusters.append(labels.max() + 1)
            with_noise += bool((labels == -1).any())
            off = d[~np.eye(len(d), dtype=bool)]
            tied += len(np.unique(off)) < len(off) // 2
            zero += bool((off == 0).any())
    n_clusters_arr = np.array(n_clusters)
    total = len(n_clusters_arr)
    assert (n_clusters_arr >= 2).mean() > 0.4
    assert (n_clusters_arr >= 4).sum() > 20
    assert with_noise > total // 3
    assert tied > total // 3
    assert zero > total // 5


@pytest.mark.parametrize("n", [3, 4, 5, 7])
@pytest.mark.parametrize("min_samples", [None, 1, 2, 3])
def test_small_and_degenerate_matrices(n, min_samples):
    """Tiny N, all points identical (every lambda infinite), and an equidistant simplex (all ties)."""
    for d in (np.zeros((n, n)), 1.0 - np.eye(n), _manhattan(np.arange(n)[:, None] // 2)):
        for min_cluster_size in (2, 3):
            np.testing.assert_array_equal(hdbscan_labels(d, min_cluster_size, min_samples),
                                          sklearn_labels(d, min_cluster_size, min_samples))


def test_separated_groups_are_found():
    points = np.array([0.0, 0.1, 0.2, 0.3, 5.0, 5.1, 5.2, 5.3, 20.0])
    d = np.abs(points[:, None] - points[None, :])
    assert hdbscan_labels(d, min_cluster_size=3).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, -1]


def test_input_is_not_modified():
    d = blobs(np.random.default_rng(3), 40)
    before = d.copy()
    hdbscan_labels(d, 4, 2)
    np.testing.assert_array_equal(d, before)


@pytest.mark.parametrize("kwargs", [{"min_cluster_size": 1}, {"min_samples": 0}, {"min_samples": 11}])
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        hdbscan_labels(uniform(np.random.default_rng(0), 10), **kwargs)


def test_invalid_matrices_raise():
    with pytest.raises(ValueError):
        hdbscan_labels(np.zeros((3, 4)))
    with pytest.raises(ValueError):
        hdbscan_labels(np.zeros((1, 1)), min_cluster_size=2)
    d = np.ones((4, 4))
    d[0, 1] = d[1, 0] = np.nan
    with pytest.raises(ValueError):
        hdbscan_labels(d, min_cluster_size=2)


@pytest.mark.parametrize("seed", range(5))
def test_clustering_hdbscan_is_sklearn_relabelled(seed):
    """`clustering.hdbscan` gives scikit-learn's partition, renumbered in leaf order."""
    d = masks(np.random.default_rng([seed, 99]), 40)
    size = max(2, min(5, len(d) // 3))
    expected = C._relabel_in_leaf_order(sklearn_labels(d, size, None),
                                        C.dendrogram_order(d))
    np.testing.assert_array_equal(C.hdbscan(d)["cluster_hdbscan"].to_numpy(), expected)


def test_clustering_does_not_import_sklearn():
    code = ("import sys; import numpy as np; import masklab.analysis.clustering as C; "
            "rng = np.random.default_rng(0); x = rng.random((16, 50)) < 0.5; "
            "d = (x[:, None] != x[None]).mean(-1); labels = C.cluster_masks(d); "
            "assert 'cluster_hdbscan' in labels.columns and len(labels) == 16; "
            "bad = sorted(m for m in sys.modules if m.startswith('sklearn')); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
