"""Consensus among masks: per weight, how many of the N masks keep it.

Counts come from the packed words, a block of words (and rows) at a time, so only a bounded slab is
ever unpacked. Under the null (independent uniform masks with the same per-layer counts c_i of n bits)
each weight is kept by mask i with probability p_i = c_i / n independently, so its keep count is
Binomial(N, k) when all masks keep k n weights (Poisson-binomial otherwise; the histogram uses
Binomial(N, mean density), which is exact for top-k masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from masklab.analysis.distances import ALL
from masklab.analysis.kernels import layer_bounds, row_counts
from masklab.errors import UserError
from masklab.store.bits import MaskSet

UNPACK_BYTES = 32 << 20     # the unpacked slab (one byte per bit) of one block


def _bit_counts(bits: np.ndarray, w0: int, w1: int, unpack_bytes: int = UNPACK_BYTES) -> np.ndarray:
    """How many rows have each bit of words [w0, w1) set: ((w1 - w0) * 64,) int64."""
    counts = np.zeros((w1 - w0) * 64, dtype=np.int64)
    n_rows = bits.shape[0]
    words_per_block = max(1, min(w1 - w0, unpack_bytes // (64 * max(1, n_rows))))
    rows_per_block = max(1, min(n_rows, unpack_bytes // (64 * words_per_block)))
    for c0 in range(w0, w1, words_per_block):
        c1 = min(c0 + words_per_block, w1)
        for r0 in range(0, n_rows, rows_per_block):
            block = np.ascontiguousarray(bits[r0:r0 + rows_per_block, c0:c1]).astype("<u8", copy=False)
            unpacked = np.unpackbits(block.view(np.uint8), axis=1, bitorder="little")
            counts[(c0 - w0) * 64:(c1 - w0) * 64] += unpacked.sum(axis=0, dtype=np.int64)
    return counts


def keep_counts(masks: MaskSet, layer: str | int | None = None) -> np.ndarray:
    """Per weight, the number of masks that keep it.

    Parameters
    ----------
    masks : MaskSet
    layer : str or int, optional
        One layer (by name or position); default the whole mask, layers concatenated in model order
        (the flat weight order of `MaskSet.unpack`).

    Returns
    -------
    np.ndarray of int64
        One count per weight, flat (C order within a layer).
    """
    rows = masks.layers.itertuples() if layer is None else [masks._layer_row(layer)]
    parts = [_bit_counts(masks.bits, r.word_start, r.word_stop)[:r.n_bits] for r in rows]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _layer_summaries(masks: MaskSet):
    """(name, n_bits, keep counts per weight, kept count per mask) for every layer."""
    kept = row_counts(masks.bits, layer_bounds(masks.layers["word_start"], masks.layers["word_stop"]))
    for k, r in enumerate(masks.layers.itertuples()):
        yield r.layer, int(r.n_bits), keep_counts(masks, k), kept[:, k]


def consensus(masks: MaskSet) -> pd.DataFrame:
    """Per layer and for the whole mask ("all", first): the weights every mask keeps, none keeps, any keeps.

    Returns
    -------
    DataFrame
        Columns: layer, n_bits, n_masks, density (mean kept fraction), kept_by_all (the core),
        kept_by_none, kept_by_any, union_fraction (kept_by_any / n_bits), and the null expectations
        expected_kept_by_all = n prod_i p_i, expected_kept_by_none = n prod_i (1 - p_i),
        expected_union_fraction.
    """
    _require_masks(masks)
    rows = []
    for name, n, counts, kept in _layer_summaries(masks):
        p = kept / n
        rows.append({"layer": name, "n_bits": n, "n_masks": len(masks), "density": p.mean(),
                     "kept_by_all": int((counts == len(masks)).sum()),
                     "kept_by_none": int((counts == 0).sum()),
                     "expected_kept_by_all": n * np.prod(p), "expected_kept_by_none": n * np.prod(1 - p)})
    table = pd.DataFrame(rows)
    summed = ["n_bits", "kept_by_all", "kept_by_none", "expected_kept_by_all", "expected_kept_by_none"]
    total = table[summed].sum()
    total_row = {"layer": ALL, "n_masks": len(masks),
                 "density": (table["density"] * table["n_bits"]).sum() / total["n_bits"], **total.to_dict()}
    table = pd.concat([pd.DataFrame([total_row]), table], ignore_index=True)
    table["kept_by_any"] = table["n_bits"] - table["kept_by_none"]
    table["union_fraction"] = table["kept_by_any"] / table["n_bits"]
    table["expected_union_fraction"] = 1 - table["expected_kept_by_none"] / table["n_bits"]
    columns = ["layer", "n_bits", "n_masks", "density", "kept_by_all", "kept_by_none", "kept_by_any",
               "union_fraction", "expected_kept_by_all", "expected_kept_by_none", "expected_union_fraction"]
    return table[columns].astype({"n_bits": np.int64, "kept_by_all": np.int64, "kept_by_none": np.int64,
                                  "kept_by_any": np.int64})


def consensus_histogram(masks: MaskSet) -> pd.DataFrame:
    """Histogram of the per-weight keep counts against Binomial(N, k), per layer and for "all".

    Returns
    -------
    DataFrame
        Columns: layer, n_masks_keeping (0..N), n_weights, fraction, expected (n_bits x the Binomial(N, k)
        pmf, k the layer's mean density; "all" sums the layers), expected_fraction.
    """
    # imported here: scipy.stats costs 0.55 s to import, paid only by the stage that draws the histogram
    from scipy.stats import binom

    _require_masks(masks)
    n_masks = len(masks)
    keeping = np.arange(n_masks + 1)
    parts = []
    for name, n, counts, kept in _layer_summaries(masks):
        observed = np.bincount(counts, minlength=n_masks + 1)
        expected = n * binom.pmf(keeping, n_masks, kept.mean() / n)
        parts.append(pd.DataFrame({"layer": name, "n_masks_keeping": keeping, "n_weights": observed,
                                   "n_bits": n, "expected": expected}))
    layers = pd.concat(parts, ignore_index=True)
    total = layers.groupby("n_masks_keeping", sort=True)[["n_weights", "n_bits", "expected"]].sum()
    total = total.reset_index().assign(layer=ALL)
    table = pd.concat([total, layers], ignore_index=True)
    table["fraction"] = table["n_weights"] / table["n_bits"]
    table["expected_fraction"] = table["expected"] / table["n_bits"]
    return table[["layer", "n_masks_keeping", "n_weights", "fraction", "expected", "expected_fraction"]]


def union_coverage(masks: MaskSet, order: Sequence[int] | None = None) -> pd.DataFrame:
    """Fraction of each layer's weights kept by at least one of the first m masks, m = 1..N.

    Parameters
    ----------
    masks : MaskSet
    order : sequence of mask ids, optional
        The order in which masks are added (default: the set's order).

    Returns
    -------
    DataFrame
        Columns: layer ("all" and every layer), n_masks (m), mask_id (the m-th mask added), kept_by_any,
        union_fraction, expected_fraction (1 - prod_{i <= m} (1 - p_i) for random masks).
    """
    _require_masks(masks)
    rows = np.arange(len(masks)) if order is None else \
        np.array([masks._row(i) for i in order], dtype=np.int64)
    starts = masks.layers["word_start"].to_numpy(np.int64)
    n_bits = masks.layers["n_bits"].to_numpy(np.int64)
    kept = row_counts(masks.bits, layer_bounds(starts, masks.layers["word_stop"]))[rows]
    union = np.zeros(masks.n_words, dtype=np.uint64)
    covered = np.zeros((len(rows), len(n_bits)), dtype=np.int64)
    for m, row in enumerate(rows):
        np.bitwise_or(union, masks.bits[row], out=union)
        covered[m] = np.add.reduceat(np.bitwise_count(union), starts, dtype=np.int64)  # layers are contiguous
    expected = 1 - np.cumprod(1 - kept / n_bits, axis=0)
    expected_all = (expected * n_bits).sum(axis=1) / n_bits.sum()
    names = [ALL, *masks.layers["layer"]]
    covered_all = np.column_stack([covered.sum(axis=1), covered])
    fraction = covered_all / np.concatenate([[n_bits.sum()], n_bits])
    expected_all = np.column_stack([expected_all, expected])
    m = len(rows)
    return pd.DataFrame({
        "layer": np.repeat(np.array(names, dtype=object), m),
        "n_masks": np.tile(np.arange(1, m + 1), len(names)),
        "mask_id": np.tile(masks.ids[rows], len(names)),
        "kept_by_any": covered_all.T.ravel(),
        "union_fraction": fraction.T.ravel(),
        "expected_fraction": expected_all.T.ravel(),
    })


def core_weights(masks: MaskSet, min_masks: int | None = None) -> pd.DataFrame:
    """The weights kept by at least `min_masks` masks (default: by every mask, the core).

    Returns
    -------
    DataFrame
        Columns: layer, index (flat C-order index within the layer), n_masks (how many keep it).
    """
    _require_masks(masks)
    threshold = len(masks) if min_masks is None else int(min_masks)
    if not 1 <= threshold <= len(masks):
        raise UserError(f"min_masks must be between 1 and {len(masks)}, got {min_masks}")
    parts = []
    for k, name in enumerate(masks.layers["layer"]):
        counts = keep_counts(masks, k)
        index = np.flatnonzero(counts >= threshold)
        parts.append(pd.DataFrame({"layer": name, "index": index, "n_masks": counts[index]}))
    return pd.concat(parts, ignore_index=True)


def _require_masks(masks: MaskSet) -> None:
    if not isinstance(masks, MaskSet):
        raise UserError("consensus takes a MaskSet (see MaskSet.from_bool to wrap a boolean matrix)")
    if len(masks) == 0:
        raise UserError("consensus needs at least one mask")
