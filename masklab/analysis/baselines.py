"""The random baseline as tables: what the masks' distances would be for independent random masks with the
same per-layer counts (the null model of `masklab.analysis.null`), per layer and beside every pair.

- `random_baseline`: the expected distances of the whole mask and of every layer (closed and exact forms);
- `with_baseline`: a long distance table with each pair's expectation, sd and standardised intersection;
- `vs_chance`: per layer and metric, how far the masks' mean lies from chance, in sd of the null.

Sampled random masks (`random_masks`, `random_baseline_samples`) are in `masklab.analysis.random_sets`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from masklab.analysis.distances import ALL
from masklab.analysis.null import null_metric, null_stats, pair_weights
from masklab.analysis.random_sets import layer_counts
from masklab.errors import UserError
from masklab.store.bits import MaskSet

BASELINE_COLUMNS = ["layer", "n_bits", "n_keep", "density", "intersection", "intersection_std", "hamming",
                    "hamming_std", "hamming_norm", "matching", "matching_std", "jaccard", "jaccard_std",
                    "matching_iid", "jaccard_iid", "exact"]


# ---- per layer ------------------------------------------------------------------------------------

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
    if len(masks) == 0:
        raise UserError("random_baseline needs at least one mask (the counts of the random masks are the masks' "
                        "own); the MaskSet is empty")
    counts = layer_counts(masks)
    vectors, inverse, multiplicity = np.unique(counts, axis=0, return_inverse=True, return_counts=True)
    u, v, weights = pair_weights(len(counts), multiplicity)
    stats = null_stats(masks.layers["n_bits"].to_numpy(np.int64), vectors[u], vectors[v])
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
    counts_a, counts_b = layer_counts(masks), layer_counts(other)
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
    stats = null_stats(layer_bits, vectors_a[pairs[:, 0]], vectors_b[pairs[:, 1]])
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
