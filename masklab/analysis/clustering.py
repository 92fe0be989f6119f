"""Clustering of masks from their pairwise distances: hierarchical trees, HDBSCAN, silhouettes.

Input: a square distance matrix, either a numpy array (ids 0..N-1) or the square DataFrame of
``masklab.analysis.distances.distances(masks, metric="hamming_norm", form="square")`` (indexed by mask id),
or a `MaskSet`, whose normalised Hamming distances are computed here. The matrix must be symmetric with a
zero diagonal (a distance, not a similarity: pass ``hamming``/``hamming_norm`` or ``1 - jaccard``, never
``matching`` or ``jaccard`` themselves).

- **Hierarchical**: scipy `linkage` on the condensed distances. ``"average"`` (UPGMA) uses the distances as
  given. ``"ward"`` needs Euclidean distances: for 0/1 vectors the Hamming count is exactly the squared
  Euclidean distance, so Ward runs on ``sqrt(distance)`` (``sqrt(hamming_norm)`` is the Euclidean distance
  divided by ``sqrt(n_bits)``, a constant factor that changes no merge). Pass ``squared=False`` when the
  matrix already holds Euclidean distances. ``"complete"`` and ``"single"`` are accepted too.
  The tree is cut into `k` clusters (`fcluster`, ``maxclust``) or, with ``k=None``, into the k in
  ``2..min(10, N - 1)`` with the best silhouette.
- **HDBSCAN**: `sklearn.cluster.HDBSCAN(metric="precomputed")` with its other defaults (excess of mass, no
  single cluster), imported when HDBSCAN runs; label -1 is noise.
- **Silhouette**: as `sklearn.metrics.silhouette_score(metric="precomputed")` defines it, on the input
  distances (noise left out), computed here in a few numpy operations.

Whether the clusters mean anything (a tree cut always yields clusters, and the best-silhouette k is at least
2) is the structure test's question: `masklab.analysis.cluster_structure`.

Cluster labels are 0-based and numbered in dendrogram leaf order (cluster 0 holds the first leaf), so that
colours follow the ordered heatmap. Label tables have one row per mask in the matrix's order and a
``mask_id`` column, ready for ``run.table.merge(labels, on="mask_id")``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from masklab.analysis.distances import distances
from masklab.errors import UserError
from masklab.store.bits import MaskSet

LINKAGE_METHODS = ("average", "ward", "complete", "single")
CLUSTER_METHODS = ("average", "ward", "hdbscan")
MAX_K = 10
# optimal leaf ordering is about cubic in N: skip it above this by default (measured on the shared 2-core machine:
# 2.5 s a tree at 1,024 masks, where analyze orders three; a 1,024-mask heatmap is drawn at 500 x 500 cells anyway)
OPTIMAL_ORDER_MAX = 512
DEFAULT_METRIC = "hamming_norm"


# ---- input --------------------------------------------------------------------------------------------------
def as_square(dist, metric: str = DEFAULT_METRIC) -> tuple[np.ndarray, np.ndarray]:
    """(float64 N x N matrix, int64 mask ids) from a square DataFrame, a numpy matrix or a `MaskSet`.

    Checks the matrix is square, finite, non-negative, symmetric (to 1e-9 relative) and has a zero diagonal.
    """
    if isinstance(dist, MaskSet):
        dist = distances(dist, metric=metric, form="square")
    if isinstance(dist, pd.DataFrame):
        ids = np.asarray(dist.index, dtype=np.int64)
        if not np.array_equal(np.asarray(dist.columns, dtype=np.int64), ids):
            raise UserError("the distance table is not square over one set of masks (index and columns differ); "
                            "use distances(masks, form='square') without `other`")
        matrix = dist.to_numpy(dtype=np.float64)
    else:
        matrix = np.asarray(dist, dtype=np.float64)
        ids = np.arange(matrix.shape[0] if matrix.ndim else 0, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise UserError(f"expected a square N x N distance matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise UserError("the distance matrix has negative, NaN or infinite entries")
    scale = max(float(np.abs(matrix).max(initial=0.0)), 1.0)
    if not np.allclose(matrix, matrix.T, rtol=0, atol=1e-9 * scale):
        raise UserError("the distance matrix is not symmetric")
    if np.abs(np.diagonal(matrix)).max(initial=0.0) > 1e-9 * scale:
        raise UserError("the distance matrix has a non-zero diagonal: pass a distance (hamming, hamming_norm, "
                        "1 - jaccard), not a similarity (matching, jaccard)")
    matrix = 0.5 * (matrix + matrix.T)
    np.fill_diagonal(matrix, 0.0)
    return matrix, ids


def require_masks(n: int, at_least: int, what: str) -> None:
    """A UserError naming `what` when fewer than `at_least` masks are given."""
    if n < at_least:
        raise UserError(f"{what} needs at least {at_least} masks; got {n}")


# ---- hierarchical -------------------------------------------------------------------------------------------
def linkage_matrix(dist, method: str = "average", *, squared: bool = True,
                   optimal: bool | None = None) -> np.ndarray:
    """scipy linkage matrix ((N - 1) x 4) of the masks' distances.

    Parameters
    ----------
    dist : square DataFrame, ndarray or MaskSet
    method : {"average", "ward", "complete", "single"}
    squared : bool
        For ``"ward"`` only: the distances are squared Euclidean (true of Hamming on 0/1 vectors), so the tree
        is built on their square root.
    optimal : bool, optional
        Reorder the leaves so that the most similar neighbours sit side by side
        (`scipy.cluster.hierarchy.optimal_leaf_ordering`; changes no cluster, only the drawing order).
        Default: when N <= 512 (`OPTIMAL_ORDER_MAX`; it is about cubic in N: 2.5 s for 1,024 masks on a
        shared 2-core machine).
    """
    matrix, _ = as_square(dist)
    require_masks(len(matrix), 2, "a hierarchical clustering")
    return _linkage(matrix, method, squared, optimal)


def _linkage(matrix: np.ndarray, method: str, squared: bool = True, optimal: bool | None = None) -> np.ndarray:
    if method not in LINKAGE_METHODS:
        raise UserError(f"unknown linkage method {method!r}; choose one of {', '.join(LINKAGE_METHODS)}")
    condensed = tree_distances(matrix, method, squared)
    linkage = hierarchy.linkage(condensed, method=method)
    if optimal is None:
        optimal = len(matrix) <= OPTIMAL_ORDER_MAX
    if optimal and len(matrix) > 2:
        linkage = hierarchy.optimal_leaf_ordering(linkage, condensed)
    return linkage


def tree_distances(matrix: np.ndarray, method: str, squared: bool) -> np.ndarray:
    """The condensed distances the tree of `method` is built on."""
    condensed = squareform(matrix, checks=False)
    return np.sqrt(condensed) if method == "ward" and squared else condensed


def dendrogram_order(dist, method: str = "average", *, squared: bool = True,
                     optimal: bool | None = None) -> np.ndarray:
    """Mask ids in dendrogram leaf order, for heatmaps (the leaves of `linkage_matrix` with the same
    arguments)."""
    matrix, ids = as_square(dist)
    if len(matrix) < 2:
        return ids.copy()
    return ids[hierarchy.leaves_list(_linkage(matrix, method, squared, optimal))]


def _relabel_in_leaf_order(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """0-based labels numbered by first appearance along `order` (noise, -1, stays -1)."""
    mapping: dict[int, int] = {}
    for lab in labels[order]:
        if lab >= 0 and lab not in mapping:
            mapping[int(lab)] = len(mapping)
    return np.array([mapping.get(int(lab), -1) for lab in labels], dtype=np.int64)


def cut_tree(linkage: np.ndarray, k: int) -> np.ndarray:
    """Labels (0-based, in leaf order) of the tree cut into at most `k` clusters (fewer when merges tie)."""
    n = len(linkage) + 1
    if not 1 <= int(k) <= n:
        raise UserError(f"k = {k} clusters is invalid for {n} masks: use 1 <= k <= {n}")
    raw = hierarchy.fcluster(linkage, t=int(k), criterion="maxclust")
    return _relabel_in_leaf_order(raw, hierarchy.leaves_list(linkage))


def k_range(n: int, ks: Sequence[int] | None) -> list[int]:
    """The cuts k tried for N masks: `ks` (default 2..min(10, N - 1)) within 2..N - 1."""
    if ks is None:
        return list(range(2, min(MAX_K, n - 1) + 1))
    return [int(k) for k in ks if 2 <= int(k) <= n - 1]


def silhouette(dist, labels) -> float:
    """Mean silhouette of `labels` on the precomputed distances, noise (-1) left out; NaN unless there are
    2..n-1 clusters among the n labelled masks."""
    matrix, _ = as_square(dist)
    return matrix_silhouette(matrix, np.asarray(labels))


def matrix_silhouette(matrix: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette on a precomputed matrix, exactly as `sklearn.metrics.silhouette_score` defines it
    (a singleton's silhouette is 0; 0 / 0 is 0), in a few numpy operations: the structure test calls it
    hundreds of times, and scikit-learn's input checks cost more than the arithmetic here."""
    labels = np.asarray(labels)
    keep = labels >= 0
    n, n_clusters = int(keep.sum()), len(np.unique(labels[keep]))
    if not 2 <= n_clusters <= n - 1:
        return float("nan")
    sub = matrix if keep.all() else matrix[np.ix_(keep, keep)]
    _, code = np.unique(labels[keep], return_inverse=True)
    code = code.ravel()
    members = np.zeros((n, n_clusters))
    members[np.arange(n), code] = 1.0
    sums = sub @ members                     # distance from each mask to all members of each cluster
    sizes = members.sum(axis=0)
    own = sizes[code]
    rows = np.arange(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        intra = sums[rows, code] / (own - 1)
        mean_to = sums / sizes
        mean_to[rows, code] = np.inf
        inter = mean_to.min(axis=1)
        values = (inter - intra) / np.maximum(intra, inter)
    values[own == 1] = 0.0
    return float(np.nan_to_num(values).mean())


def silhouette_curve(dist, method: str = "average", ks: Sequence[int] | None = None, *,
                     squared: bool = True) -> pd.DataFrame:
    """Silhouette of the `method` tree cut at each k (default 2..min(10, N - 1)): columns method, k,
    n_clusters (can be below k when merges tie), silhouette."""
    matrix, _ = as_square(dist)
    return _silhouette_curve(matrix, _linkage(matrix, method, squared, optimal=False), method, ks)


def _silhouette_curve(matrix: np.ndarray, linkage: np.ndarray, method: str,
                      ks: Sequence[int] | None) -> pd.DataFrame:
    rows = []
    for k in k_range(len(matrix), ks):
        labels = cut_tree(linkage, k)
        rows.append({"method": method, "k": k, "n_clusters": len(np.unique(labels)),
                     "silhouette": matrix_silhouette(matrix, labels)})
    return pd.DataFrame(rows, columns=["method", "k", "n_clusters", "silhouette"])


def _best_k(curve: pd.DataFrame) -> int | None:
    ok = curve.dropna(subset=["silhouette"])
    return None if ok.empty else int(ok.loc[ok["silhouette"].idxmax(), "k"])


def hierarchical(dist, method: str = "average", k: int | None = None, *, squared: bool = True,
                 ks: Sequence[int] | None = None) -> pd.DataFrame:
    """Cluster labels of the `method` tree cut into `k` clusters (``None``: the k of `ks`, default
    2..min(10, N - 1), with the best silhouette; one cluster when no cut has a defined silhouette).

    Returns a DataFrame with columns mask_id, cluster_<method>.
    """
    matrix, ids = as_square(dist)
    return pd.DataFrame({"mask_id": ids, f"cluster_{method}": _hierarchical(matrix, method, k, squared, ks)})


def _hierarchical(matrix, method, k, squared, ks, linkage: np.ndarray | None = None) -> np.ndarray:
    n = len(matrix)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    linkage = _linkage(matrix, method, squared) if linkage is None else linkage
    if k is None:
        k = _best_k(_silhouette_curve(matrix, linkage, method, ks)) or 1
    return cut_tree(linkage, k)


def hdbscan(dist, min_cluster_size: int | None = None, min_samples: int | None = None) -> pd.DataFrame:
    """HDBSCAN labels on the precomputed distances: columns mask_id, cluster_hdbscan (-1: noise).

    `min_cluster_size` defaults to ``max(2, min(5, N // 3))`` (scikit-learn's 5 for N >= 15)."""
    matrix, ids = as_square(dist)
    return pd.DataFrame({"mask_id": ids, "cluster_hdbscan": _hdbscan(matrix, min_cluster_size, min_samples)})


def _hdbscan(matrix: np.ndarray, min_cluster_size: int | None, min_samples: int | None) -> np.ndarray:
    n = len(matrix)
    if n < 3:
        return np.full(n, -1, dtype=np.int64)
    size = max(2, min(5, n // 3)) if min_cluster_size is None else int(min_cluster_size)
    # imported here: sklearn.cluster costs 0.7 s to import, paid only by the stages that cluster by density
    from sklearn.cluster import HDBSCAN

    labels = HDBSCAN(metric="precomputed", min_cluster_size=size, min_samples=min_samples,
                     copy=True).fit_predict(matrix).astype(np.int64)
    # number the clusters by their first member in leaf order, like the trees
    return _relabel_in_leaf_order(labels, hierarchy.leaves_list(_linkage(matrix, "average")))


def cluster_masks(dist, k: int | None = None, methods: Sequence[str] = CLUSTER_METHODS, *, squared: bool = True,
                  ks: Sequence[int] | None = None, min_cluster_size: int | None = None,
                  linkages: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """All cluster labels of the masks, one row per mask: mask_id, cluster_average, cluster_ward,
    cluster_hdbscan (the columns of `methods`).

    Hierarchical trees are cut into `k` clusters (``None``: best silhouette over `ks`); HDBSCAN chooses its
    own number (``-1`` marks noise). `linkages`: trees already built by `linkage_matrix` with the same
    arguments, by method (e.g. the one a heatmap drew), used instead of building them again. Merge into the
    mask table with ``run.table.merge(labels, on="mask_id")``.
    """
    matrix, ids = as_square(dist)
    out = pd.DataFrame({"mask_id": ids})
    for method in methods:
        if method == "hdbscan":
            out["cluster_hdbscan"] = _hdbscan(matrix, min_cluster_size, None)
        else:
            out[f"cluster_{method}"] = _hierarchical(matrix, method, k, squared, ks, (linkages or {}).get(method))
    return out


def cophenetic_correlation(dist, method: str = "average", *, squared: bool = True) -> float:
    """Correlation between the tree's cophenetic distances and the distances it was built on (near 1: the
    distances are well described by a hierarchy)."""
    matrix, _ = as_square(dist)
    return _cophenetic(matrix, method, squared)


def _cophenetic(matrix: np.ndarray, method: str, squared: bool = True) -> float:
    if len(matrix) < 3:
        return float("nan")
    condensed = tree_distances(matrix, method, squared)
    if np.ptp(condensed) == 0:
        return float("nan")
    return cophenet(_linkage(matrix, method, squared, optimal=False), condensed)


def cophenet(linkage: np.ndarray, condensed: np.ndarray) -> float:
    """scipy's cophenetic correlation of a tree and its condensed distances (NaN, unwarned, when constant)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(hierarchy.cophenet(linkage, condensed)[0])


def cluster_summary(dist, labels: pd.DataFrame, *, squared: bool = True) -> pd.DataFrame:
    """One row per label column of `labels` (as `cluster_masks` returns): method, n_clusters, n_noise,
    silhouette (on the input distances, noise left out), cophenetic (the tree's cophenetic correlation;
    NaN for HDBSCAN)."""
    matrix, ids = as_square(dist)
    table = labels.set_index("mask_id").reindex(ids)
    rows = []
    for column in [c for c in table.columns if str(c).startswith("cluster_")]:
        method = str(column)[len("cluster_"):]
        lab = table[column].to_numpy(dtype=np.int64)
        rows.append({"method": method, "n_clusters": int(len(np.unique(lab[lab >= 0]))),
                     "n_noise": int((lab < 0).sum()), "silhouette": matrix_silhouette(matrix, lab),
                     "cophenetic": _cophenetic(matrix, method, squared) if method in LINKAGE_METHODS
                     else float("nan")})
    return pd.DataFrame(rows, columns=["method", "n_clusters", "n_noise", "silhouette", "cophenetic"])


__all__ = ["CLUSTER_METHODS", "LINKAGE_METHODS", "as_square", "cluster_masks", "cluster_summary",
           "cophenetic_correlation", "cut_tree", "dendrogram_order", "hdbscan", "hierarchical", "linkage_matrix",
           "silhouette", "silhouette_curve"]
