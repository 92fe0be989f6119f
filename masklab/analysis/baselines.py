"""What distances random masks would have: closed forms, exact hypergeometric forms, and samples.

The null model: two masks drawn independently and uniformly among all masks with the same per-layer kept
counts as the masks compared. In a layer of n bits with counts c_a and c_b the intersection I is then
hypergeometric,

    E[I] = c_a c_b / n,      Var[I] = c_a c_b (n - c_a)(n - c_b) / (n^2 (n - 1)),

and layers are independent, so the whole mask ("all") has the sums of the layers' means and variances.
Hamming, normalised Hamming and matching are affine in I, so their expectations are exact. With
c_a = c_b = k n the expected matching is exactly ``k^2 + (1 - k)^2``; Jaccard ``I / (c_a + c_b - I)`` is not
affine, and its expectation is computed exactly from the hypergeometric pmf (summed over the window of
+-40 standard deviations around the mean, which holds all of the probability to double precision), for
the whole mask by convolving the layers' pmfs. When that would take too long (more than
`EXACT_PMF_POINTS` pmf points, or thousands of distinct count combinations, as for masks whose counts
all differ), a second-order delta method is used instead,
``E[f(I)] ~ f(mu) + f''(mu) Var[I] / 2``, whose error is below 1e-7 for layers of 1,000 bits or more; the
column ``exact`` says which. The papers' closed form for independent bits of density k, ``k / (2 - k)``,
is reported beside it as ``jaccard_iid`` (it and the exact value agree to O(1/n)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from masklab.analysis.distances import ALL, METRICS, distances, metric_values
from masklab.analysis.kernels import before_load, layer_bounds, row_counts
from masklab.errors import UserError
from masklab.store.bits import MaskSet

EXACT_PMF_POINTS = 4_000_000      # pmf points summed at most for the exact Jaccard moments
EXACT_MAX_COMBINATIONS = 2_000    # distinct (n, c_a, c_b) per layer handled exactly
EXACT_MAX_TOTALS = 64             # distinct pairs of count vectors whose whole-mask pmf is convolved
PMF_HALF_WIDTH_SD = 40.0
BASELINE_COLUMNS = ["layer", "n_bits", "n_keep", "density", "intersection", "intersection_std", "hamming",
                    "hamming_std", "hamming_norm", "matching", "matching_std", "jaccard", "jaccard_std",
                    "matching_iid", "jaccard_iid", "exact"]


# ---- hypergeometric intersections -----------------------------------------------------------------

def intersection_moments(n_bits, count_a, count_b) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the intersection of two independent uniform masks with fixed counts."""
    n = np.asarray(n_bits, dtype=np.float64)
    ca = np.asarray(count_a, dtype=np.float64)
    cb = np.asarray(count_b, dtype=np.float64)
    mean = ca * cb / n
    denominator = n * n * (n - 1)
    var = np.divide(ca * cb * (n - ca) * (n - cb), denominator, out=np.zeros(np.broadcast(n, ca, cb).shape),
                    where=denominator > 0)
    return mean, var


def intersection_pmf(n_bits: int, count_a: int, count_b: int) -> tuple[int, np.ndarray]:
    """The hypergeometric pmf of the intersection over mean +- 40 sd: (first value, probabilities).

    Computed from the ratio of consecutive terms, ``p(i + 1) / p(i) = (c_a - i)(c_b - i) / ((i + 1)
    (n - c_a - c_b + i + 1))``, summed in logs and normalised over the window: exact to rounding (about
    1e-13 relative), and a thousand times faster than evaluating each term on its own.
    """
    n, ca, cb = int(n_bits), int(count_a), int(count_b)
    low, high = max(0, ca + cb - n), min(ca, cb)
    mean, var = intersection_moments(n, ca, cb)
    half_width = PMF_HALF_WIDTH_SD * np.sqrt(var) + 1
    first, last = max(low, int(np.floor(mean - half_width))), min(high, int(np.ceil(mean + half_width)))
    i = np.arange(first, last, dtype=np.float64)
    log_ratio = np.log(ca - i) + np.log(cb - i) - np.log(i + 1) - np.log(n - ca - cb + i + 1)
    log_pmf = np.concatenate([[0.0], np.cumsum(log_ratio)])
    pmf = np.exp(log_pmf - log_pmf.max())
    return first, pmf / pmf.sum()


def _jaccard_of(intersection, count_sum):
    union = count_sum - intersection
    return np.divide(intersection, union, out=np.ones(np.shape(union)), where=union > 0)


def _pmf_moments(first: int, pmf: np.ndarray, count_sum: int) -> tuple[float, float]:
    jaccard = _jaccard_of(np.arange(first, first + len(pmf), dtype=np.float64), float(count_sum))
    mean = float(pmf @ jaccard)
    return mean, float(np.sqrt(max(0.0, pmf @ (jaccard - mean) ** 2)))


def _delta_jaccard(mean_i, var_i, count_sum) -> tuple[np.ndarray, np.ndarray]:
    """Second-order delta method for E and sd of I / (S - I)."""
    s = np.asarray(count_sum, dtype=np.float64)
    gap = s - mean_i
    safe_gap = np.where(gap > 0, gap, 1.0)
    mean = np.where(gap > 0, mean_i / safe_gap + s * var_i / safe_gap ** 3, 1.0)
    std = np.where(gap > 0, s * np.sqrt(var_i) / safe_gap ** 2, 0.0)
    return mean, std


def _unique_combinations(n: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (n, c_a, c_b) rows and the index of each input among them (1-D keys: fast for millions)."""
    sizes, size_index = np.unique(n, return_inverse=True)
    key = (size_index * (sizes.max(initial=0) + 1) + ca) * (sizes.max(initial=0) + 1) + cb \
        if (sizes.max(initial=0) + 1) ** 2 * len(sizes) < 2 ** 62 else None
    if key is None:
        combos, inverse = np.unique(np.column_stack([n, ca, cb]), axis=0, return_inverse=True)
        return combos, inverse.ravel()
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return np.column_stack([n[first], ca[first], cb[first]]), inverse.ravel()


def _pmf_points(n_bits, count_a, count_b) -> np.ndarray:
    _, var = intersection_moments(n_bits, count_a, count_b)
    width = 2 * (PMF_HALF_WIDTH_SD * np.sqrt(var) + 1) + 1
    return np.minimum(width, np.minimum(count_a, count_b) + 1)


def layer_jaccard_moments(n_bits, count_a, count_b) -> tuple[np.ndarray, np.ndarray, bool]:
    """E and sd of Jaccard under the null for arrays of (n, c_a, c_b); exact unless too many points."""
    n, ca, cb = (np.asarray(x, dtype=np.int64).ravel() for x in np.broadcast_arrays(n_bits, count_a, count_b))
    combos, inverse = _unique_combinations(n, ca, cb)
    exact = len(combos) <= EXACT_MAX_COMBINATIONS and _pmf_points(*combos.T).sum() <= EXACT_PMF_POINTS
    if exact:
        moments = np.array([_pmf_moments(*intersection_pmf(int(m), int(a), int(b)), int(a + b))
                            for m, a, b in combos]).reshape(-1, 2)
        mean, std = moments[:, 0], moments[:, 1]
    else:
        mean_i, var_i = intersection_moments(combos[:, 0], combos[:, 1], combos[:, 2])
        mean, std = _delta_jaccard(mean_i, var_i, combos[:, 1] + combos[:, 2])
    return mean[inverse], std[inverse], bool(exact)


def total_jaccard_moments(layer_bits, counts_a, counts_b) -> tuple[np.ndarray, np.ndarray, bool]:
    """E and sd of whole-mask Jaccard for pairs of per-layer count vectors (P, L) under the null.

    The whole-mask intersection is the sum of independent per-layer hypergeometrics: exact by
    convolving the layers' pmfs, or the delta method on its exact mean and variance.
    """
    layer_bits = np.asarray(layer_bits, dtype=np.int64)
    ca, cb = np.atleast_2d(counts_a).astype(np.int64), np.atleast_2d(counts_b).astype(np.int64)
    points = _pmf_points(layer_bits[None, :], ca, cb).sum()
    mean_i, var_i = intersection_moments(layer_bits[None, :], ca, cb)
    count_sum = ca.sum(axis=1) + cb.sum(axis=1)
    if points > EXACT_PMF_POINTS or len(ca) > EXACT_MAX_TOTALS:
        mean, std = _delta_jaccard(mean_i.sum(axis=1), var_i.sum(axis=1), count_sum)
        return mean, std, False
    pairs = [_pmf_moments(*_convolved_pmf(layer_bits, a, b), s) for a, b, s in zip(ca, cb, count_sum)]
    moments = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    return moments[:, 0], moments[:, 1], True


def _convolved_pmf(layer_bits: np.ndarray, count_a: np.ndarray,
                   count_b: np.ndarray) -> tuple[int, np.ndarray]:
    first, pmf = 0, np.ones(1)
    for n, a, b in zip(layer_bits, count_a, count_b):
        layer_first, layer_pmf = intersection_pmf(int(n), int(a), int(b))
        first += layer_first
        pmf = np.convolve(pmf, layer_pmf) if min(len(pmf), len(layer_pmf)) < 64 else \
            np.clip(_fft_convolve(pmf, layer_pmf), 0.0, None)
    return first, pmf / pmf.sum()


def _fft_convolve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Full linear convolution by real FFT (what scipy.signal.fftconvolve does, without importing it)."""
    size = len(x) + len(y) - 1
    fft_size = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, fft_size) * np.fft.rfft(y, fft_size), fft_size)[:size]


# ---- per pair of count vectors --------------------------------------------------------------------

def _null_stats(layer_bits: np.ndarray, counts_a: np.ndarray, counts_b: np.ndarray) -> dict[str, np.ndarray]:
    """Null moments for P pairs of count vectors (P, L): arrays (P, L + 1), column 0 the whole mask."""
    mean_i, var_i = intersection_moments(layer_bits[None, :], counts_a, counts_b)
    layer_jaccard, layer_jaccard_std, layer_exact = layer_jaccard_moments(layer_bits[None, :], counts_a,
                                                                          counts_b)
    total_jaccard, total_jaccard_std, total_exact = total_jaccard_moments(layer_bits, counts_a, counts_b)
    shape = counts_a.shape
    return {
        "n_bits": np.concatenate([[layer_bits.sum()], layer_bits]),
        "count_a": np.column_stack([counts_a.sum(axis=1), counts_a]),
        "count_b": np.column_stack([counts_b.sum(axis=1), counts_b]),
        "mean_i": np.column_stack([mean_i.sum(axis=1), mean_i]),
        "var_i": np.column_stack([var_i.sum(axis=1), var_i]),
        "jaccard": np.column_stack([total_jaccard, layer_jaccard.reshape(shape)]),
        "jaccard_std": np.column_stack([total_jaccard_std, layer_jaccard_std.reshape(shape)]),
        "exact": np.array([total_exact] + [layer_exact] * shape[1]),
    }


def null_metric(metric: str, stats: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Expectation and sd of `metric` under the null, from `_null_stats`."""
    n, ca, cb = stats["n_bits"][None, :], stats["count_a"], stats["count_b"]
    sd_i = np.sqrt(stats["var_i"])
    if metric == "jaccard":
        return stats["jaccard"], stats["jaccard_std"]
    mean = metric_values(metric, stats["mean_i"], ca, cb, n)
    scale = {"hamming": 2.0, "hamming_norm": 2.0 / n, "matching": 2.0 / n}[metric]
    return mean, scale * sd_i


def _pair_weights(n_masks: int, multiplicity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs (u <= v) of distinct count vectors and how many mask pairs each stands for."""
    u, v = np.triu_indices(len(multiplicity))
    weights = np.where(u == v, multiplicity[u] * (multiplicity[u] - 1) / 2, multiplicity[u] * multiplicity[v])
    if n_masks < 2:
        weights = np.where(u == v, 1.0, 0.0)
    keep = weights > 0
    return u[keep], v[keep], weights[keep].astype(np.float64)


def _per_layer_counts(masks: MaskSet) -> np.ndarray:
    return row_counts(masks.bits, layer_bounds(masks.layers["word_start"], masks.layers["word_stop"]))


def random_baseline(masks: MaskSet) -> pd.DataFrame:
    """Expected distances between independent random masks with the same per-layer counts.

    One row for the whole mask ("all") and one per layer. When the masks' counts differ (not the case
    for top-k masks), the figures average over all pairs of the set the null of each pair, and the stds
    are those of that mixture.

    Returns
    -------
    pandas.DataFrame
        Columns: layer, n_bits, n_keep (mean kept per mask), density, intersection, intersection_std,
        hamming, hamming_std, hamming_norm, matching, matching_std, jaccard, jaccard_std (exact
        hypergeometric, see the module docstring), matching_iid = k^2 + (1 - k)^2 and
        jaccard_iid = k / (2 - k) for density k (the closed forms for independent bits), exact (bool).
    """
    counts = _per_layer_counts(masks)
    vectors, inverse, multiplicity = np.unique(counts, axis=0, return_inverse=True, return_counts=True)
    u, v, weights = _pair_weights(len(counts), multiplicity)
    stats = _null_stats(masks.layers["n_bits"].to_numpy(np.int64), vectors[u], vectors[v])
    weights = weights[:, None] / weights.sum()
    n_bits = stats["n_bits"]
    n_keep = np.concatenate([[counts.sum(axis=1).mean()], counts.mean(axis=0)])
    density = n_keep / n_bits
    table = {"layer": [ALL, *masks.layers["layer"]], "n_bits": n_bits, "n_keep": n_keep, "density": density}
    table["intersection"], table["intersection_std"] = _mixture(stats["mean_i"], stats["var_i"], weights)
    for metric in ("hamming", "hamming_norm", "matching", "jaccard"):
        mean, std = null_metric(metric, stats)
        table[metric], spread = _mixture(mean, std ** 2, weights)
        if metric != "hamming_norm":
            table[f"{metric}_std"] = spread
    table["matching_iid"] = density ** 2 + (1 - density) ** 2
    table["jaccard_iid"] = density / (2 - density)
    table["exact"] = stats["exact"]
    return pd.DataFrame(table, columns=BASELINE_COLUMNS)


def _mixture(means: np.ndarray, variances: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = (weights * means).sum(axis=0)
    second = (weights * (variances + means ** 2)).sum(axis=0)
    return mean, np.sqrt(np.maximum(second - mean ** 2, 0.0))


# ---- the baseline beside a distance table -------------------------------------------------------

def with_baseline(table: pd.DataFrame, masks: MaskSet, other: MaskSet | None = None) -> pd.DataFrame:
    """A long distance table with its random baseline beside every row.

    Parameters
    ----------
    table : DataFrame
        The long form of `masklab.distances` (mask_a, mask_b, layer, metric, value).
    masks, other : MaskSet
        The set(s) the table was computed from (mask_a ids from `masks`, mask_b from `other` or `masks`).

    Returns
    -------
    DataFrame
        A copy with ``baseline`` (expected value for independent random masks with the pair's per-layer
        counts), ``baseline_std``, ``ratio_to_chance`` = value / baseline, and ``z`` = (I - E[I]) / sd(I),
        the observed intersection standardised by its hypergeometric mean and sd (positive: more overlap
        than chance, whatever the metric; NaN where the null has no spread).
    """
    other = masks if other is None else other
    counts_a, counts_b = _per_layer_counts(masks), _per_layer_counts(other)
    rows_a, rows_b = _rows_of(masks, table["mask_a"]), _rows_of(other, table["mask_b"])
    layers = [ALL, *masks.layers["layer"]]
    codes, names = pd.factorize(table["layer"])
    unknown = sorted(set(map(str, names)) - set(layers))
    if unknown:
        raise UserError(f"unknown layers in the table: {unknown}; layers of these masks: {', '.join(layers)}")
    k = np.array([layers.index(name) for name in names], dtype=np.int64)[codes]
    # the null depends on a pair only through the two count vectors: compute it once per distinct pair of them
    vectors_a, vector_a = np.unique(counts_a, axis=0, return_inverse=True)
    vectors_b, vector_b = np.unique(counts_b, axis=0, return_inverse=True)
    keys = vector_a.ravel()[rows_a] * len(vectors_b) + vector_b.ravel()[rows_b]
    unique_keys, pair_of_row = np.unique(keys, return_inverse=True)
    pairs = np.column_stack([unique_keys // len(vectors_b), unique_keys % len(vectors_b)])
    layer_bits = masks.layers["n_bits"].to_numpy(np.int64)
    stats = _null_stats(layer_bits, vectors_a[pairs[:, 0]], vectors_b[pairs[:, 1]])
    pair_of_row = pair_of_row.ravel()
    out = table.copy()
    baseline, baseline_std = np.empty(len(table)), np.empty(len(table))
    for metric in pd.unique(table["metric"]):
        rows = (table["metric"] == metric).to_numpy()
        mean, std = null_metric(str(metric), stats)
        baseline[rows], baseline_std[rows] = mean[pair_of_row[rows], k[rows]], std[pair_of_row[rows], k[rows]]
    observed = _observed_intersection(table, stats, pair_of_row, k)
    sd_i = np.sqrt(stats["var_i"][pair_of_row, k])
    out["baseline"], out["baseline_std"] = baseline, baseline_std
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio_to_chance"] = table["value"].to_numpy(np.float64) / baseline
        out["z"] = np.where(sd_i > 0, (observed - stats["mean_i"][pair_of_row, k]) / sd_i, np.nan)
    return out


VS_CHANCE_COLUMNS = ["layer", "metric", "n_masks", "n_pairs", "mean", "chance", "chance_sd", "z_vs_chance",
                     "chance_se", "z_mean_vs_chance", "se_masks"]


def vs_chance(table: pd.DataFrame, *, cross: bool = False) -> pd.DataFrame:
    """How far the masks' mean overlap lies from chance, per layer and metric, in units of the exact null.

    Parameters
    ----------
    table : DataFrame
        A long distance table with its baseline (`with_baseline`): mask_a, mask_b, layer, metric, value,
        baseline, baseline_std.
    cross : bool
        The pairs join two different sets (mask_a from one, mask_b from another): ids of the two sides are
        then different masks even when equal.

    Returns
    -------
    DataFrame, one row per (layer, metric), columns:

    - ``n_masks``, ``n_pairs``: what the mean rests on;
    - ``mean``: the masks' value averaged over the pairs; ``chance``: the same average of each pair's exact
      null expectation (`random_baseline`: two independent uniform masks with the pair's per-layer counts);
    - ``chance_sd``: the standard deviation of ONE random pair's value under that null (exact hypergeometric;
      the root mean square over the pairs when their counts differ);
    - ``z_vs_chance`` = (mean - chance) / chance_sd: the effect size, in sd of a single random pair. It does not
      grow with the number of masks, so runs of any size compare; "+9 sd" means the average pair overlaps
      as much as one random pair would only with probability far below 1e-9;
    - ``chance_se``: the sd of the MEAN over these pairs for independent random masks:
      ``sqrt(sum of the pairs' null variances) / n_pairs``. Exact although pairs share masks: for independent
      uniform masks with fixed counts the overlap of (a, b) has the same distribution whatever a is, so the
      overlaps of pairs sharing a mask are uncorrelated;
    - ``z_mean_vs_chance`` = (mean - chance) / chance_se: the test statistic against "these masks are random"
      (about sqrt(n_pairs) times z_vs_chance);
    - ``se_masks``: the jackknife standard error of ``mean`` over masks (leave one mask out: every pair it is
      in goes), i.e. how much the mean would move with other masks from the same training; it accounts for
      the pairs sharing masks, which real (not random) masks make correlated. NaN below 3 masks.
    """
    needed = ["mask_a", "mask_b", "layer", "metric", "value", "baseline", "baseline_std"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UserError(f"vs_chance needs a table from with_baseline (columns {', '.join(needed)}); missing "
                        f"{', '.join(missing)}")
    rows = []
    for (layer, metric), g in table.groupby(["layer", "metric"], sort=False):
        value = g["value"].to_numpy(np.float64)
        base = g["baseline"].to_numpy(np.float64)
        var = g["baseline_std"].to_numpy(np.float64) ** 2
        n_pairs = len(g)
        mean, chance = float(value.mean()), float(base.mean())
        chance_sd = float(np.sqrt(var.mean()))
        chance_se = float(np.sqrt(var.sum()) / n_pairs)
        ids_a, ids_b = g["mask_a"].to_numpy(np.int64), g["mask_b"].to_numpy(np.int64)
        keys = np.concatenate([2 * ids_a, 2 * ids_b + 1] if cross else [ids_a, ids_b])
        codes, uniques = pd.factorize(keys)
        code_a, code_b = codes[:n_pairs], codes[n_pairs:]
        n_masks = len(uniques)
        rows.append({"layer": layer, "metric": metric, "n_masks": n_masks, "n_pairs": n_pairs, "mean": mean,
                     "chance": chance, "chance_sd": chance_sd,
                     "z_vs_chance": (mean - chance) / chance_sd if chance_sd > 0 else np.nan,
                     "chance_se": chance_se,
                     "z_mean_vs_chance": (mean - chance) / chance_se if chance_se > 0 else np.nan,
                     "se_masks": _jackknife_se(value, code_a, code_b, n_masks)})
    return pd.DataFrame(rows, columns=VS_CHANCE_COLUMNS)


def _jackknife_se(value: np.ndarray, code_a: np.ndarray, code_b: np.ndarray, n_masks: int) -> float:
    """Leave-one-mask-out jackknife standard error of the mean of pair values."""
    if n_masks < 3:
        return float("nan")
    own_sum = np.bincount(code_a, value, n_masks) + np.bincount(code_b, value, n_masks)
    own_count = np.bincount(code_a, minlength=n_masks) + np.bincount(code_b, minlength=n_masks)
    left = len(value) - own_count
    ok = left > 0
    if ok.sum() < 2:
        return float("nan")
    loo = (value.sum() - own_sum[ok]) / left[ok]
    m = int(ok.sum())
    return float(np.sqrt((m - 1) / m * ((loo - loo.mean()) ** 2).sum()))


def _rows_of(masks: MaskSet, ids: pd.Series) -> np.ndarray:
    order = np.argsort(masks.ids, kind="stable")
    position = np.searchsorted(masks.ids[order], ids.to_numpy(np.int64))
    position = np.minimum(position, len(order) - 1)
    found = masks.ids[order][position] == ids.to_numpy(np.int64)
    if not found.all():
        missing = sorted(set(ids.to_numpy()[~found].tolist()))[:5]
        raise UserError(f"mask ids {missing} of the table are not in the mask set")
    return order[position]


def _observed_intersection(table: pd.DataFrame, stats: dict, pair_of_row: np.ndarray,
                           k: np.ndarray) -> np.ndarray:
    """Recover I from each row's metric value and the pair's counts."""
    value = table["value"].to_numpy(np.float64)
    n = stats["n_bits"][k]
    count_sum = stats["count_a"][pair_of_row, k] + stats["count_b"][pair_of_row, k]
    metric = table["metric"].to_numpy()
    hamming = np.select([metric == "hamming", metric == "hamming_norm", metric == "matching"],
                        [value, value * n, (1.0 - value) * n], default=np.nan)
    from_jaccard = value * count_sum / (1.0 + value)
    return np.round(np.where(metric == "jaccard", from_jaccard, (count_sum - hamming) / 2))


# ---- sampled random masks -------------------------------------------------------------------------

def random_masks(masks: MaskSet, n_masks: int | None = None, random_state=None) -> MaskSet:
    """Uniform random masks with the same layout and per-layer counts as `masks`.

    Random mask r copies the per-layer counts of mask ``r % len(masks)``; every layer's kept positions are
    a uniform random subset of that size. Ids are 0 .. n_masks - 1.

    How (fast, and exactly uniform): each layer starts as independent random bits of about the layer's
    density, made straight from random 64-bit words (``x = r | y`` or ``r & y`` per binary digit of the
    density), and is then brought to its exact count by flipping uniformly chosen bits: kept bits off when
    there are too many, free bits on when too few (rejection sampling of positions). Every step treats all
    positions alike, so the result is invariant under any permutation of the layer's positions; being of
    fixed count, it is therefore uniform over the subsets of that size. No bool matrix is ever made.
    """
    rng = np.random.default_rng(random_state)
    n_masks = len(masks) if n_masks is None else int(n_masks)
    if n_masks < 1 or len(masks) == 0:
        raise UserError(f"need at least one mask to copy counts from and n_masks >= 1, got {n_masks}")
    return MaskSet(random_mask_bits(masks.layers, _per_layer_counts(masks), n_masks, rng), masks.layers.copy())


def random_mask_bits(layers: pd.DataFrame, counts: np.ndarray, n_masks: int, rng: np.random.Generator) -> np.ndarray:
    """The packed words of `random_masks`: (n_masks, W) uint64, random mask r with the per-layer counts
    ``counts[r % len(counts)]`` (an (N, L) array) over the layout `layers` (MaskSet.layers)."""
    n_bits = layers["n_bits"].to_numpy(np.int64)
    starts, stops = layers["word_start"].to_numpy(np.int64), layers["word_stop"].to_numpy(np.int64)
    bits = np.zeros((int(n_masks), int(stops[-1]) if len(stops) else 0), dtype=np.uint64)
    rows = np.arange(int(n_masks)) % len(counts)
    for k in range(len(n_bits)):
        w0, w1 = int(starts[k]), int(stops[k])
        bits[:, w0:w1] = _random_layer_words(rng, int(n_bits[k]), w1 - w0, counts[rows, k])
    return bits


DENSITY_DIGITS = 10  # binary digits of the starting density: within 1/2048 of the target, the fix-up is small
_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def _random_words(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(_ONES, size=shape, dtype=np.uint64, endpoint=True)


def _bernoulli_words(rng: np.random.Generator, shape, density: float) -> np.ndarray:
    """Words whose bits are independent with P(1) = `density` rounded to DENSITY_DIGITS binary digits."""
    scaled = int(round(density * (1 << DENSITY_DIGITS)))
    if density > 0 and scaled == 0:
        scaled = 1
    if scaled <= 0:
        return np.zeros(shape, dtype=np.uint64)
    if scaled >= 1 << DENSITY_DIGITS:
        return np.full(shape, _ONES, dtype=np.uint64)
    words: np.ndarray | None = None
    # from the last binary digit to the first: digit 1 -> r | y (P = 1/2 + P(y)/2), digit 0 -> r & y (P(y)/2)
    for digit in range(DENSITY_DIGITS - 1, -1, -1):
        bit = (scaled >> (DENSITY_DIGITS - 1 - digit)) & 1
        if words is None:
            if bit:
                words = _random_words(rng, shape)
            continue
        r = _random_words(rng, shape)
        words = (r | words) if bit else (r & words)
    assert words is not None, "0 < scaled < 2^DENSITY_DIGITS has a 1 among its binary digits"
    return words


def _random_layer_words(rng: np.random.Generator, n_bits: int, n_words: int, counts: np.ndarray) -> np.ndarray:
    """(R, n_words) packed rows, row r a uniform random subset of `counts[r]` of the layer's `n_bits` bits."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros((len(counts), n_words), dtype=np.uint64)
    used = min(n_words, -(-n_bits // 64))
    if used == 0:
        return out
    words = _bernoulli_words(rng, (len(counts), used), float(counts.mean()) / n_bits)
    tail = n_bits - 64 * (used - 1)
    if tail < 64:
        words[:, -1] &= np.uint64((1 << tail) - 1)
    while True:
        have = np.bitwise_count(words).sum(axis=1, dtype=np.int64)
        excess = have - counts
        todo = np.flatnonzero(excess)
        if len(todo) == 0:
            out[:, :used] = words
            return out
        _flip_some(rng, words, todo, excess[todo], have[todo], n_bits)


SMALL_FLIP_DRAWS = 1 << 16  # below this many candidates numpy takes ~1 ms: less than loading numba's kernel


def _flip_kernel(n_candidates: int | None = None):
    """The numba kernel of `_flip_some`, or None without numba, or for fewer than `SMALL_FLIP_DRAWS`
    candidates while the kernel is not loaded yet (its first use in a process costs ~0.2 s; numpy makes the
    same choice)."""
    if n_candidates is not None and before_load(n_candidates, SMALL_FLIP_DRAWS, "masklab.analysis._numba_random"):
        return None
    try:
        from masklab.analysis._numba_random import flip_to_counts
    except ImportError:
        return None
    return flip_to_counts


def _flip_some(rng, words: np.ndarray, todo: np.ndarray, excess: np.ndarray, have: np.ndarray,
               n_bits: int) -> None:
    """In each row of `todo`, flip up to |excess| distinct uniformly chosen bits that are 1 (excess > 0) or
    0 (excess < 0): candidates are uniform positions, kept in draw order if in the right state and new."""
    need = np.abs(excess)
    ones = excess > 0
    share = np.where(ones, have, n_bits - have) / n_bits
    draws = int(min(4 * n_bits + 64, np.ceil((need / np.maximum(share, 1.0 / n_bits)).max() * 1.25) + 32))
    candidates = rng.integers(0, n_bits, size=(len(todo), draws))
    kernel = _flip_kernel(candidates.size)
    if kernel is not None:  # the same choice in one compiled pass (numpy's sorts cost 10x more)
        kernel(words, todo.astype(np.int64), excess.astype(np.int64), candidates)
        return
    word_index, shift = candidates >> 6, (candidates & 63).astype(np.uint64)
    state = ((words[todo[:, None], word_index] >> shift) & np.uint64(1)).astype(bool)
    usable = state == ones[:, None]
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, axis=1)
    repeat = np.zeros(ranked.shape, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]  # later draws of a position already drawn
    seen = np.empty_like(repeat)
    np.put_along_axis(seen, order, repeat, axis=1)
    usable &= ~seen
    chosen = usable & (np.cumsum(usable, axis=1) <= need[:, None])
    row, column = np.nonzero(chosen)
    np.bitwise_xor.at(words, (todo[row], word_index[row, column]), np.uint64(1) << shift[row, column])


def random_baseline_samples(masks: MaskSet, n_samples: int | None = None,
                            metric: str | Sequence[str] = METRICS, per_layer: bool = True,
                            random_state=None) -> pd.DataFrame:
    """The empirical null distribution: distances among `n_samples` random masks (see `random_masks`).

    Parameters
    ----------
    masks : MaskSet
        Supplies the layout and the per-layer counts.
    n_samples : int, optional
        Random masks to draw (default: as many as `masks`, so the pairs match the observed table one to
        one); their n_samples (n_samples - 1) / 2 pairs are the samples. Pairwise intersections of
        independent fixed-count random masks are pairwise independent, so each pair is a fair sample.
    metric, per_layer
        As for `masklab.distances`.
    random_state : int or numpy Generator, optional

    Returns
    -------
    DataFrame
        The long distance table of the random masks (mask_a, mask_b, layer, metric, value).
    """
    n_samples = max(2, len(masks)) if n_samples is None else int(n_samples)
    if n_samples < 2:
        raise UserError(f"n_samples must be at least 2 (one pair), got {n_samples}")
    return distances(random_masks(masks, n_samples, random_state), metric=metric, per_layer=per_layer)
