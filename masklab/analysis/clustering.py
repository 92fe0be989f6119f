"""Clustering of masks from their pairwise distances: hierarchical trees, HDBSCAN, silhouettes, and a test
against random masks of the same per-layer counts.

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
- **Against random masks** (`structure_vs_random`): the best silhouette and the cophenetic correlation of
  the real masks against the same statistics on R sets of random masks, each random mask with exactly the
  per-layer kept counts of one real mask (`masklab.analysis.random_sets.random_masks`); a Monte Carlo one-sided
  p-value (99 random sets by default: resolution 0.01) says whether the real masks have more cluster
  structure than chance, and the effect size (in sd of the random sets) how much more. (A tree cut always yields
  clusters, and the best-silhouette k is at least 2: only this comparison says whether they mean anything.)

Cluster labels are 0-based and numbered in dendrogram leaf order (cluster 0 holds the first leaf), so that
colours follow the ordered heatmap. Label tables have one row per mask in the matrix's order and a
``mask_id`` column, ready for ``run.table.merge(labels, on="mask_id")``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from masklab.errors import UserError
from masklab.store.bits import MaskSet
from masklab.units import signed_sd

LINKAGE_METHODS = ("average", "ward", "complete", "single")
CLUSTER_METHODS = ("average", "ward", "hdbscan")
MAX_K = 10
OPTIMAL_ORDER_MAX = 1024  # optimal leaf ordering is about cubic in N: skip it above this by default
DEFAULT_METRIC = "hamming_norm"


# ---- input --------------------------------------------------------------------------------------------------
def as_square(dist, metric: str = DEFAULT_METRIC) -> tuple[np.ndarray, np.ndarray]:
    """(float64 N x N matrix, int64 mask ids) from a square DataFrame, a numpy matrix or a `MaskSet`.

    Checks the matrix is square, finite, non-negative, symmetric (to 1e-9 relative) and has a zero diagonal.
    """
    if isinstance(dist, MaskSet):
        from masklab.analysis.distances import distances

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


def _need(n: int, at_least: int, what: str) -> None:
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
        Default: when N <= 1024 (it is about cubic in N: 0.4 s for 1,000 masks).
    """
    matrix, _ = as_square(dist)
    _need(len(matrix), 2, "a hierarchical clustering")
    return _linkage(matrix, method, squared, optimal)


def _linkage(matrix: np.ndarray, method: str, squared: bool = True, optimal: bool | None = None) -> np.ndarray:
    if method not in LINKAGE_METHODS:
        raise UserError(f"unknown linkage method {method!r}; choose one of {', '.join(LINKAGE_METHODS)}")
    condensed = _tree_distances(matrix, method, squared)
    linkage = hierarchy.linkage(condensed, method=method)
    if optimal is None:
        optimal = len(matrix) <= OPTIMAL_ORDER_MAX
    if optimal and len(matrix) > 2:
        linkage = hierarchy.optimal_leaf_ordering(linkage, condensed)
    return linkage


def _tree_distances(matrix: np.ndarray, method: str, squared: bool) -> np.ndarray:
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


def _k_range(n: int, ks: Sequence[int] | None) -> list[int]:
    if ks is None:
        return list(range(2, min(MAX_K, n - 1) + 1))
    return [int(k) for k in ks if 2 <= int(k) <= n - 1]


def silhouette(dist, labels) -> float:
    """Mean silhouette of `labels` on the precomputed distances, noise (-1) left out; NaN unless there are
    2..n-1 clusters among the n labelled masks."""
    matrix, _ = as_square(dist)
    return _silhouette(matrix, np.asarray(labels))


def _silhouette(matrix: np.ndarray, labels: np.ndarray) -> float:
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
    for k in _k_range(len(matrix), ks):
        labels = cut_tree(linkage, k)
        rows.append({"method": method, "k": k, "n_clusters": len(np.unique(labels)),
                     "silhouette": _silhouette(matrix, labels)})
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


def _hierarchical(matrix, method, k, squared, ks) -> np.ndarray:
    n = len(matrix)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    linkage = _linkage(matrix, method, squared)
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
                  ks: Sequence[int] | None = None, min_cluster_size: int | None = None) -> pd.DataFrame:
    """All cluster labels of the masks, one row per mask: mask_id, cluster_average, cluster_ward,
    cluster_hdbscan (the columns of `methods`).

    Hierarchical trees are cut into `k` clusters (``None``: best silhouette over `ks`); HDBSCAN chooses its
    own number (``-1`` marks noise). Merge into the mask table with
    ``run.table.merge(labels, on="mask_id")``.
    """
    matrix, ids = as_square(dist)
    out = pd.DataFrame({"mask_id": ids})
    for method in methods:
        if method == "hdbscan":
            out["cluster_hdbscan"] = _hdbscan(matrix, min_cluster_size, None)
        else:
            out[f"cluster_{method}"] = _hierarchical(matrix, method, k, squared, ks)
    return out


def cophenetic_correlation(dist, method: str = "average", *, squared: bool = True) -> float:
    """Correlation between the tree's cophenetic distances and the distances it was built on (near 1: the
    distances are well described by a hierarchy)."""
    matrix, _ = as_square(dist)
    return _cophenetic(matrix, method, squared)


def _cophenetic(matrix: np.ndarray, method: str, squared: bool = True) -> float:
    if len(matrix) < 3:
        return float("nan")
    condensed = _tree_distances(matrix, method, squared)
    if np.ptp(condensed) == 0:
        return float("nan")
    return _cophenet(_linkage(matrix, method, squared, optimal=False), condensed)


def _cophenet(linkage: np.ndarray, condensed: np.ndarray) -> float:
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
                     "n_noise": int((lab < 0).sum()), "silhouette": _silhouette(matrix, lab),
                     "cophenetic": _cophenetic(matrix, method, squared) if method in LINKAGE_METHODS
                     else float("nan")})
    return pd.DataFrame(rows, columns=["method", "n_clusters", "n_noise", "silhouette", "cophenetic"])


# ---- against random masks -----------------------------------------------------------------------------------
STATISTICS = ("silhouette", "cophenetic")
DEFAULT_N_RANDOM = 99        # p can reach 1 / (1 + 99) = 0.01
STRUCTURE_ALPHA = 0.05       # "detected": p below this
# Kaufman & Rousseeuw's reading of the average silhouette (Finding Groups in Data, 1990): up to 0.25 no
# substantial structure, 0.26-0.50 weak (possibly artificial), 0.51-0.70 reasonable, above 0.70 strong
SILHOUETTE_WEAK, SILHOUETTE_REASONABLE, SILHOUETTE_STRONG = 0.25, 0.50, 0.70


def structure_statistics(dist, method: str = "average", *, squared: bool = True,
                         ks: Sequence[int] | None = None) -> dict[str, float]:
    """``{"silhouette": best silhouette of the `method` tree over ks, "cophenetic": its cophenetic
    correlation}``: both near 0 / low for structureless masks."""
    matrix, _ = as_square(dist)
    return _statistics(matrix, method, squared, ks)


def _statistics(matrix, method, squared, ks) -> dict[str, float]:
    """The two statistics from one tree: best silhouette over the cuts k of `ks`, cophenetic correlation."""
    n = len(matrix)
    condensed = _tree_distances(matrix, method, squared)
    linkage = hierarchy.linkage(condensed, method=method)
    best = float("nan")
    cuts = _MaxclustCuts(linkage)
    for k in _k_range(n, ks):
        value = _silhouette(matrix, cuts.labels(k))
        if np.isfinite(value) and not value <= best:
            best = value
    cophenetic = _cophenet(linkage, condensed) if n >= 3 and np.ptp(condensed) > 0 else float("nan")
    return {"silhouette": best, "cophenetic": cophenetic}


class _MaxclustCuts:
    """Flat clusters of a tree cut into at most k clusters, the same partitions as
    ``scipy.cluster.hierarchy.fcluster(linkage, k, criterion="maxclust")`` of scipy 1.15 and later (ties in
    merge height give fewer clusters; scipy 1.14 cut tied heights otherwise), without scipy's input
    validation, which costs ten times the cut on the structure test's small trees. Labels are arbitrary
    integers (only the partition is used)."""

    def __init__(self, linkage: np.ndarray):
        n = len(linkage) + 1
        self.n = n
        self.children = linkage[:, :2].astype(np.int64)
        # the highest merge inside each node's subtree (fcluster's monocrit for maxclust)
        top = linkage[:, 2].astype(np.float64).copy()
        for i, (a, b) in enumerate(self.children):
            for child in (a, b):
                if child >= n:
                    top[i] = max(top[i], top[child - n])
        self.top = top
        self.sorted_top = np.sort(top)

    def labels(self, k: int) -> np.ndarray:
        n = self.n
        if k >= n:
            return np.arange(n)
        threshold = self.sorted_top[n - k - 1]   # the least height that leaves at most k clusters
        merged = self.top <= threshold
        label = np.arange(2 * n - 1)
        # top-down: a merged node passes its label to its children
        for i in range(n - 2, -1, -1):
            if merged[i]:
                node = n + i
                a, b = self.children[i]
                label[a] = label[b] = label[node]
        return label[:n]


SUMMARY_COLUMNS = ["statistic", "observed", "random_mean", "random_std", "random_min", "random_max", "effect_sd",
                   "z", "p_value", "p_floor", "n_random", "n_masks"]


@dataclass(frozen=True)
class StructureTest:
    """Observed cluster statistics against those of random masks with the same per-layer counts.

    summary : DataFrame, one row per statistic (silhouette, cophenetic):

        - observed; random_mean, random_std (ddof 1), random_min, random_max over the random sets;
        - effect_sd = (observed - random_mean) / random_std: the effect size, in standard deviations of the
          random sets' values (``z`` is the same number, kept under its old name);
        - p_value: one-sided Monte Carlo p-value, ``(1 + #{random >= observed}) / (1 + n_random)``: exact
          under the null (the observed set is one more draw exchangeable with the random sets), and never
          below p_floor = 1 / (1 + n_random), the test's resolution (0.01 for the default 99 sets);
        - n_random (random sets with a finite value), n_masks (masks per set).
    samples : DataFrame, long: source ("mask" | "random"), replicate (-1 for the real masks, 0..R-1),
        statistic, value. Ready for a histogram of the random distribution with the observed value marked.

    `verdict` and `describe` word the silhouette's result as the numbers allow; `finds_structure` is what the
    report uses to decide whether clusters are worth colouring.
    """

    summary: pd.DataFrame
    samples: pd.DataFrame

    def row(self, statistic: str = "silhouette") -> pd.Series:
        """The summary row of one statistic."""
        return self.summary.set_index("statistic").loc[statistic]

    @property
    def finds_structure(self) -> bool:
        """True when the silhouette beats random masks (p < 0.05) AND is large enough to mean clusters
        (above 0.25, Kaufman & Rousseeuw's "no substantial structure" bound)."""
        row = self.row()
        return bool(row["p_value"] < STRUCTURE_ALPHA and row["observed"] > SILHOUETTE_WEAK)

    def verdict(self) -> str:
        """A few words for the silhouette's result: "not detected", "small but detectable" (p < 0.05 but
        silhouette <= 0.25: the masks differ from random ones in a way a clustering picks up, yet form no
        substantial clusters), "weak", "reasonable" or "strong cluster structure" (Kaufman & Rousseeuw)."""
        row = self.row()
        p, sil = row["p_value"], row["observed"]
        if not (np.isfinite(p) and p < STRUCTURE_ALPHA):
            return "not detected"
        if sil <= SILHOUETTE_WEAK:
            return "small but detectable"
        if sil <= SILHOUETTE_REASONABLE:
            return "weak cluster structure"
        if sil <= SILHOUETTE_STRONG:
            return "reasonable cluster structure"
        return "strong cluster structure"

    def describe(self) -> str:
        """The verdict with the numbers it rests on: observed vs random silhouette, the effect in random sd,
        the p-value with the resolution its null allows, and n."""
        row = self.row()
        n_random, n_masks = int(row["n_random"]), int(row["n_masks"])
        sd = row["random_std"]
        # enough decimals to show the random sd with two significant digits (silhouettes of near-random masks
        # are a few thousandths)
        d = max(3, 1 - int(np.floor(np.log10(sd)))) if np.isfinite(sd) and sd > 0 else 3
        return (f"{self.verdict()}: best silhouette {row['observed']:.{d}f} vs {row['random_mean']:.{d}f} "
                f"(sd {sd:.{d}f}) for random masks, {signed_sd(row['effect_sd'])} sd; "
                f"{format_p(row['p_value'], n_random)}; {n_masks} masks, {n_random} random sets")


def format_p(p: float, n_random: int) -> str:
    """A Monte Carlo p-value with the digits its resolution 1 / (1 + n_random) carries; at the floor it says
    so (no random set reached the observed value, and the test can say no more than p <= floor)."""
    if not np.isfinite(p):
        return "p = n/a"
    floor = 1.0 / (1 + n_random)
    digits = max(2, int(np.ceil(np.log10(1 + n_random))))
    if p <= floor * (1 + 1e-9):
        return f"p = {floor:.{digits}f} (the floor for {n_random} random sets: none reached the masks)"
    return f"p = {p:.{digits}f}"


def structure_vs_random(masks: MaskSet, n_random: int = DEFAULT_N_RANDOM, *, metric: str = DEFAULT_METRIC,
                        method: str = "average", random_state=0, ks: Sequence[int] | None = None,
                        squared: bool = True, max_masks: int | None = None) -> StructureTest:
    """Is there more cluster structure among `masks` than among random masks of the same per-layer counts?

    Computes the best silhouette and the cophenetic correlation of the `method` tree on the `metric`
    distances of `masks`, then of `n_random` random mask sets (`random_sets.random_masks`, each random mask
    with the per-layer counts of one real mask, all drawn from one generator seeded by `random_state`), and
    compares (see `StructureTest`). The smallest p-value is 1 / (1 + n_random): the default 99 sets resolve
    p down to 0.01.

    Cost: `n_random` sets of N random masks and their distances (the same numba kernel as `distances`) plus
    a tree and ten silhouettes each: about 0.3 s for 16 digits masks. With `max_masks`, a seeded random
    subset of that many masks is tested (and random sets of that size), for very large runs.
    """
    from masklab.analysis.distances import ALL, distances, intersections
    from masklab.analysis.random_sets import layer_counts, random_mask_bits

    if method not in LINKAGE_METHODS:
        raise UserError(f"unknown linkage method {method!r}; choose one of {', '.join(LINKAGE_METHODS)}")
    _need(len(masks), 4, "a structure test")
    if int(n_random) < 1:
        raise UserError(f"n_random = {n_random} is invalid: use at least 1 random mask set")
    rng = np.random.default_rng(random_state)
    if max_masks is not None and len(masks) > int(max_masks):
        _need(int(max_masks), 4, "a structure test (max_masks)")
        masks = masks.subset(masks.ids[np.sort(rng.choice(len(masks), int(max_masks), replace=False))].tolist())
    matrix, _ = as_square(distances(masks, metric=metric, form="square"))
    rows = [{"source": "mask", "replicate": -1, "statistic": s, "value": v}
            for s, v in _statistics(matrix, method, squared, ks).items()]
    counts = layer_counts(masks)
    for r in range(int(n_random)):
        random = MaskSet(random_mask_bits(masks.layers, counts, len(masks), rng), masks.layers)
        random_matrix = intersections(random, per_layer=False).metric(metric, ALL)
        rows += [{"source": "random", "replicate": r, "statistic": s, "value": v}
                 for s, v in _statistics(np.asarray(random_matrix, dtype=np.float64), method, squared, ks).items()]
    samples = pd.DataFrame(rows, columns=["source", "replicate", "statistic", "value"])
    summary = []
    for stat in STATISTICS:
        mine = samples[(samples["source"] == "mask") & (samples["statistic"] == stat)]
        observed = float(mine["value"].iloc[0])
        rand = samples.loc[(samples["source"] == "random") & (samples["statistic"] == stat), "value"]
        rand = rand.to_numpy(dtype=float)
        rand = rand[np.isfinite(rand)]
        std = float(rand.std(ddof=1)) if len(rand) > 1 else float("nan")
        effect = (observed - rand.mean()) / std if len(rand) > 1 and std > 0 else float("nan")
        summary.append({
            "statistic": stat, "observed": observed,
            "random_mean": float(rand.mean()) if len(rand) else float("nan"), "random_std": std,
            "random_min": float(rand.min()) if len(rand) else float("nan"),
            "random_max": float(rand.max()) if len(rand) else float("nan"),
            "effect_sd": effect, "z": effect,
            "p_value": (1 + int((rand >= observed).sum())) / (len(rand) + 1) if np.isfinite(observed)
            else float("nan"),
            "p_floor": 1.0 / (len(rand) + 1), "n_random": len(rand), "n_masks": len(masks)})
    return StructureTest(pd.DataFrame(summary, columns=SUMMARY_COLUMNS), samples)


__all__ = ["CLUSTER_METHODS", "LINKAGE_METHODS", "StructureTest", "as_square", "cluster_masks", "cluster_summary",
           "cophenetic_correlation", "cut_tree", "dendrogram_order", "format_p", "hdbscan", "hierarchical",
           "linkage_matrix", "silhouette", "silhouette_curve", "structure_statistics",
           "structure_vs_random"]
