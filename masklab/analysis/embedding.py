"""2-D embeddings of masks from their pairwise distances: UMAP, MDS and t-SNE on a precomputed matrix.

`embed` takes a square distance matrix (the square DataFrame of
``distances(masks, metric="hamming_norm", form="square")``, a numpy matrix, or a `MaskSet` whose
normalised Hamming distances are computed) and returns one row per mask: mask_id, x, y, method, ready for
``run.table.merge(coords, on="mask_id")``. Coordinates have no unit; only neighbourhoods (UMAP, t-SNE) or
distances (MDS) mean something.

- ``"umap"``: ``umap.UMAP(metric="precomputed", n_neighbors=min(15, N - 1), random_state=0)`` (imported on
  first use; the random state makes it deterministic and single-threaded). The k nearest neighbours are
  always taken from the matrix here (`knn_from_matrix`, `numpy.argpartition`: exact, linear per row) and
  handed over as ``precomputed_knn``: the same graph umap builds itself below 4,096 masks (which it would
  approximate above), and it skips compiling umap's parallel all-pairs kernels, which halves the first call
  (numba compiles umap on first use in every process: about 6 s instead of 12 s on 2 cores).
  The precomputed metric has no disconnection distance, so no edge is dropped however dissimilar the masks
  are (unlike umap's ``bit_jaccard`` on raw bits, whose default cut-off of 1 drops every edge of masks as
  far apart as these).
  UMAP's own numba kernels on this path that umap does not cache on disk (`smooth_knn_dist`,
  `compute_membership_strengths`, the single-threaded layout epoch) get numba's on-disk cache switched on
  here (`cache_umap_kernels`) before their first use: after the first process (or `masklab.analysis.warm`)
  a UMAP embedding no longer compiles for 6-12 s in every new process.
- ``"auto"`` (the default): ``"mds"`` below `UMAP_MIN_MASKS` (50) masks, ``"umap"`` from there on
  (`choose_method` says which and why): UMAP's graph of each mask's 15 nearest neighbours is every other
  mask when there are 16, so it carries no neighbourhood information; MDS draws the distances themselves.
  umap is imported only when it is used.
- ``"mds"``: metric MDS by SMACOF from the classical (Torgerson) start:
  ``sklearn.manifold.MDS(metric="precomputed", metric_mds=True, init="classical_mds", n_init=1,
  normalized_stress=False)``
  (scikit-learn 1.8+), imported when MDS runs. Deterministic: no random start, so `random_state` does not
  change it.
- ``"tsne"``: `sklearn.manifold.TSNE(metric="precomputed", init="random")`, perplexity
  ``min(30, (N - 1) / 3)``, on one thread (Barnes-Hut's OpenMP threads spin-wait: on a busy 2-core machine
  they made it 10-30x slower).

`embed_with_reference` adds random masks with the same per-layer counts (`random_sets.random_masks`) and embeds
real and random masks together: the random cloud shows what "no structure" looks like at this scale.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from masklab.analysis.clustering import DEFAULT_METRIC, as_square
from masklab.analysis.distances import distances
from masklab.analysis.random_sets import random_masks
from masklab.analysis.thresholds import UMAP_MIN_MASKS
from masklab.errors import UserError
from masklab.store.bits import MaskSet

METHODS = ("umap", "mds", "tsne")
COLUMNS = ["mask_id", "x", "y", "method"]
NAMES = {"umap": "UMAP", "mds": "MDS", "tsne": "t-SNE"}

# umap's warnings that say nothing about the result of a precomputed embedding
_QUIET = ("using precomputed metric", "Tensorflow not installed", "overridden to 1 by setting random_state",
          "n_jobs value", "precomputed_knn[2]", "is not an NNDescent object", "Graph is not fully connected",
          "spectral initialisation failed")


def choose_method(n_masks: int, method: str = "auto") -> tuple[str, str]:
    """(method, reason): what `embed` runs for `n_masks` masks when asked for `method`, and a short phrase
    saying why (empty when the method was asked for by name)."""
    if method != "auto":
        if method not in METHODS:
            raise UserError(f"unknown embedding method {method!r}; choose auto or one of {', '.join(METHODS)}")
        return method, ""
    if n_masks < UMAP_MIN_MASKS:
        return "mds", (f"MDS, not UMAP: {n_masks} masks are fewer than {UMAP_MIN_MASKS}, too few for UMAP's "
                       "nearest-neighbour graph to mean anything")
    return "umap", f"UMAP ({n_masks} masks, at least {UMAP_MIN_MASKS})"


def embed(dist, method: str = "auto", random_state: int = 0, *, n_neighbors: int | None = None,
          min_dist: float = 0.1, perplexity: float | None = None, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """2-D coordinates of the masks: DataFrame mask_id, x, y, method (one row per mask, matrix order; the
    method column names the method actually run).

    Parameters
    ----------
    dist : square DataFrame, ndarray or MaskSet
        Distances (symmetric, zero diagonal); a MaskSet is measured with `metric`.
    method : {"auto", "umap", "mds", "tsne"}
        "auto": MDS below 50 masks, UMAP from 50 (`choose_method`).
    random_state : int
        Seed; the same seed gives the same coordinates.
    n_neighbors, min_dist : UMAP's (default ``min(15, N - 1)`` neighbours).
    perplexity : t-SNE's (default ``min(30, (N - 1) / 3)``; must be below N).
    """
    matrix, ids = as_square(dist, metric)
    n = len(matrix)
    method, _ = choose_method(n, method)
    if n < 3:
        raise UserError(f"an embedding needs at least 3 masks; got {n}")
    if method == "umap":
        xy = _umap(matrix, random_state, n_neighbors, min_dist)
    elif method == "mds":
        xy = _mds(matrix)  # deterministic: random_state has nothing to seed
    else:
        xy = _tsne(matrix, random_state, perplexity)
    return pd.DataFrame({"mask_id": ids, "x": xy[:, 0], "y": xy[:, 1], "method": method}, columns=COLUMNS)


def knn_from_matrix(matrix: np.ndarray, k: int, block_rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), each N x k, of every row's k nearest rows, itself first, nearest first
    (`numpy.argpartition` on blocks of rows: linear in N per row, no full sort)."""
    n = len(matrix)
    k = min(int(k), n)
    indices = np.empty((n, k), dtype=np.int64)
    dists = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block_rows):
        rows = np.arange(start, min(start + block_rows, n))
        block = np.array(matrix[rows], dtype=np.float64)
        block[np.arange(len(rows)), rows] = -1.0  # self first, even among duplicates at distance 0
        part = np.argpartition(block, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(rows), 1))
        part_d = np.take_along_axis(block, part, axis=1)
        order = np.argsort(part_d, axis=1, kind="stable")
        indices[rows] = np.take_along_axis(part, order, axis=1)
        dists[rows] = np.maximum(np.take_along_axis(part_d, order, axis=1), 0.0)
    return indices, dists


def _umap(matrix: np.ndarray, random_state: int, n_neighbors: int | None, min_dist: float) -> np.ndarray:
    n = len(matrix)
    k = min(15, n - 1) if n_neighbors is None else int(n_neighbors)
    if not 2 <= k <= n - 1:
        raise UserError(f"n_neighbors = {n_neighbors} is invalid for {n} masks: use 2..{n - 1}")
    with warnings.catch_warnings():
        for text in _QUIET:
            warnings.filterwarnings("ignore", message=f".*{re.escape(text)}.*")
        warnings.filterwarnings("ignore", category=FutureWarning)  # sklearn deprecations inside umap
        import umap  # here: umap (with numba and pynndescent) imports slower than torch; only UMAP needs it

        cache_umap_kernels()
        model = umap.UMAP(metric="precomputed", n_neighbors=k, min_dist=float(min_dist), n_components=2,
                          random_state=int(random_state), init="spectral" if n > 4 else "random",
                          precomputed_knn=(*knn_from_matrix(matrix, k), None))
        xy = model.fit_transform(matrix)
    return np.asarray(xy, dtype=np.float64)


# umap's numba functions on the precomputed path that umap itself compiles afresh in every process
_UMAP_UNCACHED = (("umap.umap_", "smooth_knn_dist"), ("umap.umap_", "compute_membership_strengths"),
                  ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch"))


def cache_umap_kernels() -> list[str]:
    """Switch numba's on-disk cache on for umap's kernels that `embed(method="umap")` uses and umap leaves
    uncached (`Dispatcher.enable_caching`, what ``cache=True`` does), before they are first compiled; the
    cache lives beside umap's sources (or in ``$NUMBA_CACHE_DIR``) and is invalidated by numba when umap
    changes. Returns the names switched on; a kernel already compiled in this process, missing from this
    umap version, or without a writable cache location is left as it is. Only the single-threaded layout
    kernel is cached (a fixed random_state runs it), never the parallel variant, which shares its source."""
    done = []
    for module_name, name in _UMAP_UNCACHED:
        try:
            dispatcher = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
        if not hasattr(dispatcher, "enable_caching") or dispatcher.signatures:
            continue
        from numba.core.caching import NullCache  # (numba: loaded by umap, which the import above brought)

        if not isinstance(dispatcher._cache, NullCache):
            done.append(name)
            continue
        try:
            dispatcher.enable_caching()
        except Exception:  # noqa: BLE001 - no cache location: umap compiles as it always did
            continue
        done.append(name)
    return done


def _mds(matrix: np.ndarray) -> np.ndarray:
    # imported here: sklearn.manifold costs 0.7 s to import, paid only when an embedding is drawn by MDS
    from sklearn.manifold import MDS

    model = MDS(n_components=2, metric="precomputed", metric_mds=True, init="classical_mds", n_init=1,
                normalized_stress=False)
    return np.asarray(model.fit_transform(matrix), dtype=np.float64)


def _tsne(matrix: np.ndarray, random_state: int, perplexity: float | None) -> np.ndarray:
    from sklearn.manifold import TSNE  # (see _mds)

    n = len(matrix)
    p = min(30.0, (n - 1) / 3.0) if perplexity is None else float(perplexity)
    if not 0 < p < n:
        raise UserError(f"perplexity = {perplexity} is invalid for {n} masks: use a value in (0, {n})")

    # one OpenMP thread: Barnes-Hut t-SNE's threads spin-wait, which on a busy 2-core machine costs 10-30x
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = TSNE(n_components=2, metric="precomputed", init="random", perplexity=p,
                     random_state=int(random_state))
        return np.asarray(model.fit_transform(matrix), dtype=np.float64)


def embed_all(dist, methods: Sequence[str] = METHODS, random_state: int = 0,
              metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """`embed` with each of `methods`, stacked (long: mask_id, x, y, method)."""
    matrix, ids = as_square(dist, metric)
    frame = pd.DataFrame(matrix, index=ids, columns=ids)
    return pd.concat([embed(frame, m, random_state) for m in methods], ignore_index=True)


def embed_with_reference(masks: MaskSet, n_random: int | None = None, method: str = "auto",
                         random_state: int = 0, *, metric: str = DEFAULT_METRIC, **kwargs) -> pd.DataFrame:
    """Embed `masks` together with `n_random` (default: as many) random masks of the same per-layer counts.

    Returns mask_id, x, y, method, source: ``source == "mask"`` rows carry the real mask ids; ``"random"``
    rows have ids -1, -2, ... (never a real id, so a merge with the mask table leaves them out). Random mask
    r has the per-layer counts of mask ``r % N`` (`random_sets.random_masks`, seeded from `random_state`); the
    joint distances come from `masklab.analysis.distances`.
    `kwargs` go to `embed`.
    """
    if not isinstance(masks, MaskSet):
        raise UserError("embed_with_reference takes a MaskSet (see MaskSet.from_bool)")
    n_random = len(masks) if n_random is None else int(n_random)
    if n_random < 0:
        raise UserError(f"n_random = {n_random} is invalid: use 0 or more")
    words = [np.asarray(masks.bits)]
    if n_random:
        words.append(random_masks(masks, n_random, np.random.default_rng([int(random_state), 1])).bits)
    joint = MaskSet(np.vstack(words), masks.layers.copy(), np.arange(len(masks) + n_random))
    matrix = distances(joint, metric=metric, form="square").to_numpy(dtype=np.float64)
    ids = np.concatenate([masks.ids, -1 - np.arange(n_random)])
    out = embed(pd.DataFrame(matrix, index=ids, columns=ids), method, random_state, **kwargs)
    out["source"] = ["mask"] * len(masks) + ["random"] * n_random
    return out


__all__ = ["METHODS", "NAMES", "cache_umap_kernels", "choose_method", "embed", "embed_all", "embed_with_reference",
           "knn_from_matrix"]
