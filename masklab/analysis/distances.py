"""Distances between masks, whole and per layer, from one all-pairs intersection pass.

For masks a and b over a layer of n bits with kept counts c_a, c_b and intersection I = |a AND b|:

- ``hamming``      = c_a + c_b - 2 I                      (bits that differ)
- ``hamming_norm`` = hamming / n                           (fraction of bits that differ)
- ``matching``     = 1 - hamming_norm                      (fraction that agree; the papers'
  "percent matching" is this x 100, which is how plots label it)
- ``jaccard``      = I / (c_a + c_b - I)                   (1.0 when both masks are empty)

Layer ``"all"`` is the whole mask (n = all prunable weights). `intersections` returns the raw counts as
arrays for analyses that want matrices (clustering, embeddings); `distances` returns one DataFrame,
`distance_matrices` one square DataFrame per layer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from masklab import files as W
from masklab.analysis.kernels import intersection_counts, layer_bounds, row_counts
from masklab.analysis.pairs import INTERSECTION, PairStore, count_dtype, upper_blocks
from masklab.analysis.tiles import dask_intersection_counts
from masklab.errors import UserError
from masklab.store.bits import MaskSet

METRICS = ("hamming", "hamming_norm", "matching", "jaccard")
FORMS = ("long", "square")
ALL = "all"
LONG_COLUMNS = ["mask_a", "mask_b", "layer", "metric", "value"]


def metric_values(metric: str, intersection, count_a, count_b, n_bits):
    """One metric from intersections and kept counts (numpy arrays that broadcast together)."""
    if metric == "hamming":
        return count_a + count_b - 2 * intersection
    if metric == "hamming_norm":
        return (count_a + count_b - 2 * intersection) / n_bits
    if metric == "matching":
        return 1.0 - (count_a + count_b - 2 * intersection) / n_bits
    if metric == "jaccard":
        union = np.asarray(count_a + count_b - intersection, dtype=np.float64)
        inter = np.broadcast_to(np.asarray(intersection, dtype=np.float64), union.shape)
        return np.divide(inter, union, out=np.ones(union.shape), where=union > 0)
    raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


@dataclass(frozen=True)
class Intersections:
    """All-pairs intersection counts of two mask sets (or one with itself), whole and per layer.

    Attributes
    ----------
    counts : int64 array (L + 1, Na, Nb), or a tuple of L + 1 (Na, Nb) arrays
        ``counts[k, i, j] = |a_i AND b_j|`` over layer ``layers[k]``; k = 0 is the whole mask ("all").
        From a pair folder (`stored_intersections`) each layer is its own memory-mapped matrix of
        unsigned integers (the tuple form); `metric` gives the same values from either.
        For one set (`symmetric`) the matrices are symmetric and the diagonal holds the kept counts.
    layers : tuple of str
        ``("all", name_1, ..., name_L)``, or ``("all",)`` when computed without per-layer counts.
    n_bits : int64 array (L + 1,)
        Bits of each entry of `layers`.
    kept_a, kept_b : int64 arrays (Na, L + 1), (Nb, L + 1)
        Kept bits of every mask per entry of `layers`.
    ids_a, ids_b : int64 arrays
        Mask ids of the rows and columns.
    symmetric : bool
        True when both sides are the same set.
    """

    counts: np.ndarray | tuple[np.ndarray, ...]
    layers: tuple[str, ...]
    n_bits: np.ndarray
    kept_a: np.ndarray
    kept_b: np.ndarray
    ids_a: np.ndarray
    ids_b: np.ndarray
    symmetric: bool

    def layer_index(self, layer: str | int) -> int:
        """Position of `layer` (a name, or an index into `layers`)."""
        if isinstance(layer, (int, np.integer)):
            return int(layer)
        if layer not in self.layers:
            raise UserError(f"no layer {layer!r} in these distances; layers: {', '.join(self.layers)}")
        return self.layers.index(layer)

    def metric(self, metric: str, layer: str | int | None = None) -> np.ndarray:
        """`metric` for every pair: (L + 1, Na, Nb), or (Na, Nb) for one `layer`."""
        if layer is None:
            return np.stack([self.metric(metric, k) for k in range(len(self.layers))])
        k = self.layer_index(layer)
        return self.block(metric, k, 0, len(self.ids_a))

    def square(self, metric: str, layer: str | int = ALL, positions: np.ndarray | None = None) -> np.ndarray:
        """One layer's `metric` among the masks at `positions` (the same rows and columns; default all), as an
        array (one set only): what a stage that works on a sample of the masks reads."""
        if not self.symmetric:
            raise UserError("a square of a sample of masks needs the pairs of one mask set, not two")
        k = self.layer_index(layer)
        if positions is None:
            return self.metric(metric, k)
        p = np.asarray(positions, dtype=np.int64)
        counts = np.asarray(self.counts[k][np.ix_(p, p)], dtype=np.int64)
        return metric_values(metric, counts, self.kept_a[p, k, None], self.kept_b[None, p, k], self.n_bits[k])

    def block(self, metric: str, layer: str | int, start: int, stop: int) -> np.ndarray:
        """`metric` of the rows start..stop (all columns) of one `layer`: what a stage reads at a time when
        the whole N x N would be too much to hold as float64."""
        k = self.layer_index(layer)
        counts = np.asarray(self.counts[k][start:stop], dtype=np.int64)
        return metric_values(metric, counts, self.kept_a[start:stop, k, None], self.kept_b[None, :, k],
                             self.n_bits[k])

    def condensed(self, metric: str = "hamming", layer: str | int = ALL) -> np.ndarray:
        """The upper triangle of one layer's matrix in scipy's condensed order (one set only)."""
        if not self.symmetric:
            raise UserError("condensed distances need the pairs of one mask set, not two")
        n = len(self.ids_a)
        dtype = np.int64 if metric == "hamming" else np.float64
        out = np.empty(n * (n - 1) // 2, dtype=dtype)
        at = 0
        for start, stop in upper_blocks(n, max(1, (32 << 20) // max(1, 8 * n))):
            values = self.block(metric, layer, start, stop)
            for r in range(stop - start):
                row = values[r, start + r + 1:]
                out[at:at + len(row)] = row
                at += len(row)
        return out


def intersections(masks: MaskSet, other: MaskSet | None = None, per_layer: bool = False, *,
                  backend: str = "auto", threads: int | None = None,
                  block_bytes: int | None = None, client=None, out=None) -> Intersections:
    """Count ``|a AND b|`` for all pairs of masks, whole and (if `per_layer`) per layer, in one pass.

    Parameters
    ----------
    masks : MaskSet
    other : MaskSet, optional
        A second set over the same layer layout (cross-run distances); default: pairs within `masks`,
        of which only the upper triangle is computed.
    per_layer : bool
        Also count per layer (costs about nothing extra: layers are word ranges of the same pass). Default
        False, as in `distances`.
    backend : {"auto", "numba", "numpy", "torch"}
        "auto": torch on a CUDA device, else the numba kernel, else numpy.
    threads : int, optional
        CPU threads for the numba kernel (default: all).
    block_bytes : int, optional
        Largest block of rows resident at once; matrices larger than this (memory maps larger than RAM)
        are streamed block pair by block pair. Default 1 GiB.
    client : dask.distributed.Client, optional
        Compute the pairs of one set as tiles on this cluster's workers (`masklab.analysis.tiles`); the
        workers read the rows of a run's memory-mapped matrix from its file. Same result, exactly.
    out : path, optional
        With `client`: write the (L + 1, N, N) counts into this .npy file (memory-mapped) as tiles finish.

    Returns
    -------
    Intersections
    """
    if not isinstance(masks, MaskSet) or (other is not None and not isinstance(other, MaskSet)):
        raise UserError("distances take MaskSet objects (see MaskSet.from_bool to wrap a boolean matrix)")
    if other is not None and not masks.same_layout(other):
        raise UserError("the two mask sets have different layer layouts (names, sizes or word ranges); "
                        "cross-run distances need masks of the same network")
    bounds = layer_bounds(masks.layers["word_start"], masks.layers["word_stop"])
    count_bounds = bounds if per_layer else np.array([[0, masks.n_words]], dtype=np.int64)
    if client is not None:
        if other is not None:
            raise UserError("distances on a Dask cluster take the pairs of one mask set; compute cross-run "
                            "distances in process (client=None)")
        counts = dask_intersection_counts(masks.bits, count_bounds, client, with_total=per_layer, out=out)
    else:
        counts = intersection_counts(masks.bits, None if other is None else other.bits, count_bounds,
                                     backend=backend, threads=threads, block_bytes=block_bytes,
                                     with_total=per_layer)
    layer_bits = masks.layers["n_bits"].to_numpy(np.int64)
    n_bits = np.concatenate([[layer_bits.sum()], layer_bits]) if per_layer else layer_bits.sum(keepdims=True)
    if other is None:
        kept_a = np.ascontiguousarray(np.diagonal(counts, axis1=1, axis2=2).T)
        kept_b = kept_a
    else:
        kept_a = _kept_with_total(masks.bits, bounds, per_layer)
        kept_b = _kept_with_total(other.bits, bounds, per_layer)
    layers = (ALL, *masks.layers["layer"]) if per_layer else (ALL,)
    return Intersections(counts, tuple(str(x) for x in layers), n_bits, kept_a, kept_b, masks.ids,
                         masks.ids if other is None else other.ids, other is None)


def _kept_with_total(bits: np.ndarray, bounds: np.ndarray, per_layer: bool) -> np.ndarray:
    per_layer_counts = row_counts(bits, bounds)
    total = per_layer_counts.sum(axis=1, keepdims=True)
    return np.hstack([total, per_layer_counts]) if per_layer else total


def distances(masks: MaskSet, other: MaskSet | None = None, metric: str | Sequence[str] = "hamming",
              per_layer: bool = False, form: str = "long", *, backend: str = "auto",
              threads: int | None = None, block_bytes: int | None = None, client: Any = None) -> pd.DataFrame:
    """Distances between all pairs of masks (of one set, or across two sets of the same layout), as one
    DataFrame (the square matrix of every layer: `distance_matrices`).

    Parameters
    ----------
    masks, other : MaskSet
        One set (pairs i < j) or two sets of the same layout (every pair; e.g. the masks of two runs).
        Two sets with different layouts raise `masklab.errors.UserError`.
    metric : {"hamming", "hamming_norm", "matching", "jaccard"} or a list of them
        See the module docstring. A list is only allowed with ``form="long"``.
    per_layer : bool
        Long form only: add the rows of every layer beside the whole mask ("all").
    form : {"long", "square"}
        ``"long"``: a tidy DataFrame with columns mask_a, mask_b, layer, metric, value; for one set only
        pairs with mask_a before mask_b (in the set's order) are listed, no self-pairs; layer "all"
        first, then the layers in model order.
        ``"square"``: the whole masks' Na x Nb DataFrame indexed by mask ids (index "mask_a", columns
        "mask_b"); for one set it is symmetric with the self-distance on the diagonal (hamming 0, matching
        1, jaccard 1).
    backend, threads, block_bytes, client
        See `intersections` (`client`: a dask.distributed.Client computes the pairs as tiles on its workers).

    Returns
    -------
    pandas.DataFrame
        Hamming values are int64, the others float64 (a long table of several metrics is float64).

    Examples
    --------
    >>> import numpy as np
    >>> from masklab import MaskSet, distances
    >>> masks = MaskSet.from_bool(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=bool))
    >>> distances(masks)["value"].tolist()
    [2, 0, 2]
    >>> float(distances(masks, metric="jaccard", form="square").loc[0, 1])
    0.3333333333333333
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    for name in metrics:
        if name not in METRICS:
            raise UserError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    if form not in FORMS:
        raise UserError(f"unknown form {form!r}; choose 'long' or 'square'")
    if form == "square" and len(metrics) != 1:
        raise UserError("the square form takes one metric; use form='long' for several")
    if form == "square" and per_layer:
        raise UserError("the square form is one matrix, of the whole masks; distance_matrices(masks, other, metric) "
                        "gives one per layer")
    result = intersections(masks, other, per_layer, backend=backend, threads=threads, block_bytes=block_bytes,
                           client=client)
    if form == "square":
        return square_table(result, metrics[0], ALL)
    return pd.concat([long_table(result, name) for name in metrics], ignore_index=True) \
        if len(metrics) > 1 else long_table(result, metrics[0])


def distance_matrices(masks: MaskSet, other: MaskSet | None = None, metric: str = "hamming", *,
                      backend: str = "auto", threads: int | None = None, block_bytes: int | None = None,
                      client: Any = None) -> dict[str, pd.DataFrame]:
    """The square matrix of `metric` for the whole masks and every layer: ``{layer: Na x Nb DataFrame}``
    ("all" first, then the layers in model order), each as `distances(..., form="square")` gives the whole
    masks'. Parameters as for `distances`; one pass over the bits for all layers."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    result = intersections(masks, other, True, backend=backend, threads=threads, block_bytes=block_bytes,
                           client=client)
    return square_tables(result, metric)


def square_table(result: Intersections, metric: str, layer: str | int = ALL) -> pd.DataFrame:
    """One layer's metric as an Na x Nb DataFrame indexed by mask ids."""
    return pd.DataFrame(result.metric(metric, layer), index=pd.Index(result.ids_a, name="mask_a"),
                        columns=pd.Index(result.ids_b, name="mask_b"))


def square_tables(result: Intersections, metric: str) -> dict[str, pd.DataFrame]:
    """``{layer: square DataFrame}`` for "all" and every layer."""
    return {layer: square_table(result, metric, k) for k, layer in enumerate(result.layers)}


def pair_indices(result: Intersections) -> tuple[np.ndarray, np.ndarray]:
    """Row and column positions of the pairs a long table lists (upper triangle for one set)."""
    n_a, n_b = len(result.ids_a), len(result.ids_b)
    if result.symmetric:
        return np.triu_indices(n_a, 1)
    rows, cols = np.indices((n_a, n_b))
    return rows.ravel(), cols.ravel()


def long_table(result: Intersections, metric: str) -> pd.DataFrame:
    """The tidy table (mask_a, mask_b, layer, metric, value) of one metric."""
    rows, cols = pair_indices(result)
    n_layers, n_pairs = len(result.layers), len(rows)
    values = np.empty((n_layers, n_pairs), dtype=np.int64 if metric == "hamming" else np.float64)
    for k in range(n_layers):
        intersection = np.asarray(result.counts[k][rows, cols], dtype=np.int64)
        values[k] = metric_values(metric, intersection, result.kept_a[rows, k], result.kept_b[cols, k],
                                  result.n_bits[k])
    return pd.DataFrame({
        "mask_a": np.tile(result.ids_a[rows], n_layers),
        "mask_b": np.tile(result.ids_b[cols], n_layers),
        "layer": np.repeat(np.array(result.layers, dtype=object), n_pairs),
        "metric": metric,
        "value": values.ravel(),
    }, columns=LONG_COLUMNS)


STORE_BLOCK_BYTES = 128 << 20  # int64 counts of one row block while the pair matrices are filled


def store_intersections(masks: MaskSet, store: PairStore, *, threads: int | None = None,
                        block_bytes: int = STORE_BLOCK_BYTES,
                        progress: Callable[[int, int], None] | None = None) -> Intersections:
    """Count ``|a AND b|`` for every pair of `masks`, whole and per layer, into `store` (a `PairStore` over the
    same mask ids, in the same order): one N x N matrix of unsigned integers per layer, quantity
    `INTERSECTION`, with the layer's bits as attribute ``n_bits``. Returns the `Intersections` read back from
    the store (`stored_intersections`), whose metrics equal `intersections(masks)`'s exactly.

    The pairs are computed by row blocks (rows i0..i1 against rows i0..N, the numba kernel of
    `intersections`) written straight into the memory-mapped matrices, so that memory holds one block of
    int64 counts (at most `block_bytes`) and never the (L + 1) x N x N of them. `progress(done, total)`
    is called after each block (rows done, N)."""
    if not np.array_equal(store.ids, masks.ids):
        raise UserError("the pair store is for other masks (its ids differ from the mask set's)")
    n = masks.n_masks
    bounds = layer_bounds(masks.layers["word_start"], masks.layers["word_stop"])
    names = [ALL, *(str(x) for x in masks.layers["layer"])]
    layer_bits = masks.layers["n_bits"].to_numpy(np.int64)
    n_bits = np.concatenate([[layer_bits.sum()], layer_bits])
    kept = _kept_with_total(masks.bits, bounds, True)
    rows = max(1, int(block_bytes) // max(1, 8 * len(names) * n))
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(store.writer(
            INTERSECTION, name, count_dtype(int(kept[:, k].max(initial=0))), unit="bits",
            description=f"|a AND b|: bits kept by both masks in layer {name}",
            attrs={"n_bits": int(n_bits[k])})) for k, name in enumerate(names)]
        for start, stop in upper_blocks(n, rows):
            counts = intersection_counts(masks.bits[start:stop], masks.bits[start:], bounds, threads=threads,
                                         with_total=True)
            for k, out in enumerate(outs):
                out[start:stop, start:] = counts[k]
                out[start:, start:stop] = counts[k].T
            del counts
            if progress is not None:
                progress(stop, n)
    return stored_intersections(store)


def stored_intersections(store: PairStore) -> Intersections:
    """The `Intersections` of a pair folder written by `store_intersections`: each layer a read-only memory
    map, the kept counts from the diagonals."""
    layers = store.layers(INTERSECTION)
    if not layers or layers[0] != ALL:
        raise UserError(f"{store.folder} holds no intersection counts; compute them with store_intersections")
    counts = tuple(store.read(INTERSECTION, layer) for layer in layers)
    kept = np.column_stack([np.diagonal(c).astype(np.int64) for c in counts])
    n_bits = np.array([int(store.attrs(INTERSECTION, layer)["n_bits"]) for layer in layers], dtype=np.int64)
    return Intersections(counts, tuple(layers), n_bits, kept, kept, store.ids, store.ids, True)


def distances_to_file(masks, path: str | os.PathLike, metric: str = "hamming", per_layer: bool = False,
                      client=None, progress: Callable[[int, int], None] | None = None):
    """All-pairs `metric` of a MaskSet into `path` and a per-layer summary DataFrame (what `masklab
    distances` prints: layer, metric, pairs, mean, std, min, max).

    `path` ending in .parquet (or .csv) gets the long table (mask_a, mask_b, layer, metric, value; pairs
    a < b); .npy gets the square values, shape (N, N), or (L + 1, N, N) with `per_layer` ("all" first),
    written tile by tile when `client` (a Dask Client) computes it, so that N x N never has to fit in
    memory twice. Without `client` the numba kernel runs in this process.
    """
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    path = Path(path)
    if path.suffix not in (".parquet", ".csv", ".npy"):
        raise UserError(f"--out {path}: write .parquet or .csv (long table) or .npy (square matrix)")
    W.check_target(path)  # before the work: a refused output (a link, inside a run) costs nothing
    names = [ALL, *masks.layers["layer"]] if per_layer else [ALL]
    bounds = layer_bounds(masks.layers["word_start"], masks.layers["word_stop"])
    counts_bounds = bounds if per_layer else np.array([[0, masks.n_words]], dtype=np.int64)
    layer_bits = masks.layers["n_bits"].to_numpy(np.int64)
    n_bits = np.concatenate([[layer_bits.sum()], layer_bits]) if per_layer else layer_bits.sum(keepdims=True)
    if path.suffix == ".npy":
        dtype = np.int64 if metric == "hamming" else np.float64
        n = masks.n_masks
        upper = np.triu_indices(n, 1)
        with W.atomic_npy(path, dtype, (len(names), n, n) if per_layer else (n, n)) as stored:
            square = stored if per_layer else stored[None]
            if client is not None:
                kept = _kept_with_total(masks.bits, bounds, per_layer)

                def to_metric(tile, rows_a, rows_b):
                    return metric_values(metric, tile, kept[rows_a[0]:rows_a[1]].T[:, :, None],
                                         kept[rows_b[0]:rows_b[1]].T[:, None, :], n_bits[:, None, None])

                dask_intersection_counts(masks.bits, counts_bounds, client, with_total=per_layer, out=square,
                                         progress=progress, transform=to_metric, dtype=dtype)
            else:
                square[:] = intersections(masks, per_layer=per_layer).metric(metric)
            values = [np.array(square[k][upper]) for k in range(len(names))]
            del square
    else:
        result = intersections(masks, per_layer=per_layer, client=client)
        table = long_table(result, metric)
        W.write_table(path, table)
        values = [table.loc[table["layer"] == name, "value"].to_numpy() for name in names]
    rows = [{"layer": name, "metric": metric, "pairs": len(v), "mean": float(np.mean(v)) if len(v) else None,
             "std": float(np.std(v)) if len(v) else None, "min": v.min() if len(v) else None,
             "max": v.max() if len(v) else None} for name, v in zip(names, values)]
    return pd.DataFrame(rows)
