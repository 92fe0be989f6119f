"""Per-layer summaries of the mask pairs: the mean overlap in each layer beside chance, and how far from chance
it lies (the input of `masklab.plots.per_layer_similarity`): `layer_summary` from a long distance table,
`pair_summary` the same numbers from the N x N intersection counts (`masklab.analysis.distances.Intersections`,
e.g. a pair folder's), read block by block so that no per-pair table is ever built."""

from __future__ import annotations

import numpy as np
import pandas as pd

from masklab.analysis.baselines import VS_CHANCE_COLUMNS, vs_chance
from masklab.analysis.distances import Intersections
from masklab.analysis.null import null_metric, null_stats, pair_weights
from masklab.analysis.pairs import upper_blocks
from masklab.errors import UserError

SUMMARY_COLUMNS = ["layer", "metric", "mean", "std", "min", "max", "n_pairs", "baseline"]
CHANCE_COLUMNS = [c for c in VS_CHANCE_COLUMNS if c not in ("layer", "metric", "mean", "n_pairs")]
_WITH_BASELINE = ("mask_a", "mask_b", "baseline", "baseline_std")


def layer_summary(long: pd.DataFrame, baseline: pd.DataFrame | None = None, *, cross: bool = False) -> pd.DataFrame:
    """One row per (layer, metric) of a long distance table: the pairs' mean, spread and chance.

    Parameters
    ----------
    long : DataFrame
        ``distances(masks, metric=["matching", "jaccard"], per_layer=True)``: mask_a, mask_b, layer, metric,
        value; with `masklab.analysis.baselines.with_baseline` applied (columns baseline, baseline_std) the
        summary also says how far from chance each mean lies (`vs_chance`).
    baseline : DataFrame, optional
        Random-mask expectations: wide, one column per metric (``masklab.random_baseline(masks)``: layer,
        matching, jaccard, ...) or long (layer, metric, and a column baseline, expected or value). Default:
        the mean of the long table's own ``baseline`` column when it has one.
    cross : bool
        The pairs join two different mask sets (passed on to `vs_chance`).

    Returns
    -------
    DataFrame with columns layer, metric, mean, std, min, max, n_pairs, baseline (NaN where none is given);
    when `long` carries its baseline (`with_baseline`) also n_masks, chance, chance_sd, z_vs_chance,
    chance_se, z_mean_vs_chance and se_masks (see `vs_chance`). Layers in the order of first appearance,
    metrics likewise.
    """
    if not hasattr(long, "columns"):
        raise UserError(f"layer_summary takes a pandas DataFrame, got {type(long).__name__}")
    missing = [c for c in ("layer", "metric", "value") if c not in long.columns]
    if missing:
        raise UserError(f"layer_summary needs columns layer, metric, value; missing: {', '.join(missing)}")
    if len(long) == 0:
        raise UserError("layer_summary: the distance table is empty (a run needs at least 2 masks)")
    layer_order = list(dict.fromkeys(long["layer"]))
    metric_order = list(dict.fromkeys(long["metric"]))
    out = (long.groupby(["layer", "metric"], sort=False)["value"]
           .agg(mean="mean", std="std", min="min", max="max", n_pairs="size").reset_index())
    if baseline is None and "baseline" in long.columns:
        baseline = long.groupby(["layer", "metric"], sort=False)["baseline"].mean().reset_index()
    out["baseline"] = np.nan
    if baseline is not None:
        out = out.drop(columns="baseline").merge(_long_baseline(baseline), on=["layer", "metric"], how="left")
    if all(c in long.columns for c in _WITH_BASELINE):
        chance = vs_chance(long, cross=cross).drop(columns=["mean", "n_pairs"])
        out = out.merge(chance, on=["layer", "metric"], how="left")
    out["layer"] = pd.Categorical(out["layer"], layer_order, ordered=True)
    out["metric"] = pd.Categorical(out["metric"], metric_order, ordered=True)
    out = out.sort_values(["metric", "layer"]).reset_index(drop=True)
    out["layer"] = out["layer"].astype(object)
    out["metric"] = out["metric"].astype(object)
    return out


def _long_baseline(baseline: pd.DataFrame) -> pd.DataFrame:
    if "layer" not in baseline.columns:
        raise UserError("the baseline table needs a `layer` column")
    if "metric" in baseline.columns:
        value = next((c for c in ("baseline", "expected", "value") if c in baseline.columns), None)
        if value is None:
            raise UserError("a long baseline table needs a column baseline, expected or value")
        return baseline[["layer", "metric", value]].rename(columns={value: "baseline"})
    metrics = [c for c in baseline.columns if c in ("matching", "jaccard", "hamming_norm", "hamming")]
    return baseline.melt(id_vars="layer", value_vars=metrics, var_name="metric", value_name="baseline")


BLOCK_BYTES = 64 << 20  # float64 values of one row block of one metric


class _Moments:
    """Count, mean, sum of squared deviations (Chan et al.'s pairwise update: stable for 50 million values),
    min and max of values seen block by block."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = np.inf, -np.inf

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        n_b, mean_b = values.size, float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        self.lo, self.hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / (self.n - 1))) if self.n > 1 else float("nan")


def pair_summary(result: Intersections, baseline: pd.DataFrame | None = None,
                 metrics: tuple[str, ...] = ("matching", "jaccard"), *,
                 block_bytes: int = BLOCK_BYTES) -> pd.DataFrame:
    """`layer_summary` of the pairs of one mask set from their intersection counts, without a long table.

    Parameters
    ----------
    result : Intersections
        Of one set with itself (``symmetric``), in memory or from a pair folder
        (`masklab.analysis.distances.stored_intersections`).
    baseline : DataFrame, optional
        ``masklab.random_baseline(masks)`` (wide): fills the ``baseline`` column as `layer_summary` does.
    metrics : the metrics summarised (rows ordered by metric, then layer).

    Returns
    -------
    The DataFrame that ``layer_summary(with_baseline(distances(masks, metrics, per_layer=True), masks),
    baseline)`` returns, equal to it up to the rounding of sums (about 1e-15 relative): mean, std (ddof 1),
    min, max and n_pairs over the pairs i < j; chance, chance_sd, chance_se and their z from the exact null of
    each pair's per-layer counts (weighted by how many pairs share a pair of count vectors); se_masks, the
    jackknife over masks, from the row sums of the symmetric matrices. Memory: one block of rows (at most
    `block_bytes` of float64) per metric at a time.
    """
    if not result.symmetric:
        raise UserError("pair_summary takes the pairs of one mask set; use layer_summary for cross-run tables")
    n = len(result.ids_a)
    if n < 2:
        raise UserError("layer_summary: the distance table is empty (a run needs at least 2 masks)")
    n_pairs = n * (n - 1) // 2
    layers = result.layers
    # the null of a pair depends only on the two masks' per-layer count vectors
    vectors, multiplicity = np.unique(result.kept_a[:, 1:], axis=0, return_counts=True)
    u, v, weights = pair_weights(n, multiplicity)
    stats = null_stats(result.n_bits[1:], vectors[u], vectors[v])
    moments = {(k, m): _Moments() for k in range(len(layers)) for m in metrics}
    row_sums = {(k, m): np.zeros(n) for k in range(len(layers)) for m in metrics}
    rows = max(1, int(block_bytes) // max(1, 8 * n))
    for start, stop in upper_blocks(n, rows):
        upper = np.arange(n)[None, :] > np.arange(start, stop)[:, None]
        local = np.arange(stop - start)
        for k in range(len(layers)):
            for m in metrics:
                values = result.block(m, k, start, stop)
                moments[k, m].add(values[upper])
                row_sums[k, m][start:stop] = values.sum(axis=1) - values[local, start + local]
    out = []
    for m in metrics:
        mean_null, sd_null = null_metric(m, stats)
        for k, layer in enumerate(layers):
            mo = moments[k, m]
            chance = float((weights * mean_null[:, k]).sum() / weights.sum())
            var_sum = float((weights * sd_null[:, k] ** 2).sum())
            chance_sd = float(np.sqrt(var_sum / weights.sum()))
            chance_se = float(np.sqrt(var_sum) / n_pairs)
            out.append({"layer": layer, "metric": m, "mean": mo.mean, "std": mo.std, "min": mo.lo, "max": mo.hi,
                        "n_pairs": n_pairs, "baseline": np.nan, "n_masks": n, "chance": chance,
                        "chance_sd": chance_sd,
                        "z_vs_chance": (mo.mean - chance) / chance_sd if chance_sd > 0 else np.nan,
                        "chance_se": chance_se,
                        "z_mean_vs_chance": (mo.mean - chance) / chance_se if chance_se > 0 else np.nan,
                        "se_masks": _jackknife_rows(row_sums[k, m], mo.mean * n_pairs, n, n_pairs)})
    table = pd.DataFrame(out)
    if baseline is not None:
        table = table.drop(columns="baseline").merge(_long_baseline(baseline), on=["layer", "metric"], how="left")
        table = table[["layer", "metric", "mean", "std", "min", "max", "n_pairs", "baseline",
                       *[c for c in table.columns if c not in SUMMARY_COLUMNS]]]
    return table


def _jackknife_rows(own_sum: np.ndarray, total: float, n_masks: int, n_pairs: int) -> float:
    """Leave-one-mask-out jackknife standard error of the mean over pairs, from each mask's sum over its pairs
    (what `baselines._jackknife_se` computes from a long table)."""
    if n_masks < 3:
        return float("nan")
    left = n_pairs - (n_masks - 1)
    if left <= 0:
        return float("nan")
    loo = (total - own_sum) / left
    return float(np.sqrt((n_masks - 1) / n_masks * ((loo - loo.mean()) ** 2).sum()))


__all__ = ["CHANCE_COLUMNS", "SUMMARY_COLUMNS", "layer_summary", "pair_summary"]
