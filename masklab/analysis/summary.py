"""Per-layer summaries of a long distance table: the mean overlap of the mask pairs in each layer beside
chance, and how far from chance it lies (the input of `masklab.plots.per_layer_similarity`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from masklab.analysis.baselines import VS_CHANCE_COLUMNS, vs_chance
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


__all__ = ["CHANCE_COLUMNS", "SUMMARY_COLUMNS", "layer_summary"]
