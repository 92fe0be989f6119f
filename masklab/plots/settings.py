"""The landscape across settings (`masklab.landscape`'s table): one metric family against sparsity, one colour
per method, one panel column per model or width, chance per point with its band."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from masklab.errors import UserError
from masklab.plots._style import RANDOM_COLOR, new_figure, require, styled

MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")
# what a family's metrics are called on an axis (unit from the table)
METRIC_NAMES = {
    "test_acc": "final test accuracy", "best_test_acc": "best test accuracy", "matching": "percent matching",
    "jaccard": "Jaccard index", "kept_by_all": "weights kept by all masks", "kept_by_none": "weights kept by none",
    "silhouette": "best silhouette", "cophenetic": "cophenetic correlation", "loss_barrier": "loss barrier",
    "error_barrier": "error barrier", "loss_barrier_vs_hamming": "loss barrier vs Hamming",
    "error_barrier_vs_hamming": "error barrier vs Hamming", "disagreement": "prediction disagreement",
    "disagreement_given_class": "disagreement (vs errors independent given the class)",
    "disagreement_vs_hamming": "disagreement vs Hamming", "ensemble_softmax": "ensemble accuracy (softmax)",
    "ensemble_majority": "ensemble accuracy (vote)", "cka": "linear CKA",
}
PERCENT_UNITS = ("fraction", "fraction of weights", "fraction of test samples")
# families drawn by default with a second row per metric: value - chance (the excess hides beside the trend)
EXCESS_FAMILIES = ("overlap", "consensus")
# what a family's figure shows by default (all its metrics when not listed)
FIGURE_METRICS = {"ensemble": ("ensemble_softmax_gain_over_mean", "ensemble_softmax_gain_over_best",
                               "ensemble_majority_gain_over_mean", "ensemble_majority_gain_over_best")}


def _facets(table: pd.DataFrame, facet: str | None) -> tuple[list, str]:
    if facet is None:
        facet = "model" if table["model"].nunique() > 1 else "width" if table["width"].nunique() > 1 else ""
    if not facet:
        return [None], ""
    return list(dict.fromkeys(table[facet])), facet


def _panels(rows: pd.DataFrame, metrics: Sequence[str] | None, layer: str,
            excess: bool) -> list[tuple[str, str, bool]]:
    """(metric, layer, excess) of each panel row: `layer` where a metric has it, else each of its layers; rows
    whose values are all NaN (e.g. a correlation from too few pairs) are left out."""
    wanted = list(metrics) if metrics is not None else list(dict.fromkeys(rows["metric"]))
    out: list[tuple[str, str, bool]] = []
    for metric in wanted:
        of = rows[rows["metric"] == metric]
        layers = list(dict.fromkeys(of["layer"]))
        for name in [layer] if layer in layers else layers:
            values = of.loc[of["layer"] == name, "value"].to_numpy(dtype=float)
            if not np.isfinite(values).any():
                continue
            out.append((metric, name, False))
            chance = of.loc[of["layer"] == name, "chance"].to_numpy(dtype=float)
            if excess and np.isfinite(chance).any():
                out.append((metric, name, True))
    return out


def _axis_label(metric: str, layer: str, unit: str, excess: bool = False) -> str:
    name = METRIC_NAMES.get(metric, metric.replace("_", " "))
    where = "" if layer == "all" else f", {layer}"
    shown = ("points" if excess else "%") if unit in PERCENT_UNITS else unit
    if excess:
        name = f"{name} − chance"
    return textwrap.fill(f"{name}{where}" + (f" ({shown})" if shown else ""), 34)


@styled
def landscape_vs(table: pd.DataFrame, *, family: str | None = None, metrics: Sequence[str] | None = None,
                 layer: str = "all", x: str = "sparsity", colour: str = "method", facet: str | None = None,
                 excess: bool | None = None, title: str | None = None) -> Figure:
    """A landscape table's metrics against `x` (sparsity), one line per `colour` (method), one panel row per
    metric and one column per `facet` (default: model if several, else width if several), with each point's
    chance value (hollow markers on a dashed line of the method's colour) and its band (+-1 sd of chance).

    Parameters
    ----------
    table : DataFrame
        `masklab.landscape(...)`: columns model, width, method, sparsity, epochs, family, metric, layer,
        value, sd, chance, chance_sd, unit (see masklab.analysis.landscape). Fractions (units "fraction", ...)
        are drawn in %. Cells that share everything drawn (e.g. several weight seeds) are averaged.
    family, metrics : which rows: one family's metrics (e.g. "overlap"; the ensemble family: its gains), or
        the given metric names. Rows whose values are all NaN are left out.
    layer : each metric's layer where it has one ("all": the whole network), else each of its layers.
    x, colour, facet : the columns on the x axis, as colours and as panel columns. Epochs, when they vary,
        are drawn as line styles.
    excess : add below each metric a row of value - chance, with the chance band around 0 (the excess over
        chance hides beside a trend that chance shares; default: for the overlap and consensus families).
    title : the figure's title (the family and what the bars mean are added on a second line).

    Error bars: +-1 sd of the value over what it is a mean of (masks, pairs, orders); a trained dense
    network (sparsity 0) is drawn as a dotted horizontal line.
    """
    require(table, ["method", "sparsity", "metric", "layer", "value", "chance"], "landscape_vs")
    part = table if family is None else table[table["family"] == family]
    if metrics is None and family in FIGURE_METRICS and part["metric"].isin(FIGURE_METRICS[family]).any():
        metrics = FIGURE_METRICS[family]
    if metrics is not None:
        part = part[part["metric"].isin(list(metrics))]
    if len(part) == 0:
        wanted = f"family {family!r}" if family else f"metrics {list(metrics or [])}"
        raise UserError(f"landscape_vs: the table has no rows of {wanted}")
    panels = _panels(part, metrics, layer, family in EXCESS_FAMILIES if excess is None else excess)
    if not panels:
        raise UserError("landscape_vs: every value of these rows is NaN (e.g. correlations from too few pairs)")
    facets, facet_col = _facets(part, facet)
    colours = list(dict.fromkeys(part[colour]))
    epochs = sorted(part["epochs"].unique()) if "epochs" in part.columns else [None]
    fig = new_figure(min(16.0, 1.6 + 3.6 * len(facets) + 1.8), 0.9 + 2.5 * len(panels))
    axes = fig.subplots(len(panels), len(facets), squeeze=False, sharex=True)
    for row, (metric, lay, minus) in enumerate(panels):
        rows = part[(part["metric"] == metric) & (part["layer"] == lay)]
        unit = str(rows["unit"].iloc[0]) if "unit" in rows.columns and len(rows) else ""
        scale = 100.0 if unit in PERCENT_UNITS else 1.0
        for col, value in enumerate(facets):
            ax = axes[row, col]
            cells = rows if facet_col == "" else rows[rows[facet_col] == value]
            for i, name in enumerate(colours):
                for e, n_epochs in enumerate(epochs):
                    g = cells[cells[colour] == name]
                    if n_epochs is not None:
                        g = g[g["epochs"] == n_epochs]
                    if len(g) == 0:
                        continue
                    g = g.groupby(x, sort=True)[["value", "sd", "chance", "chance_sd"]].mean().reset_index()
                    if minus:  # the excess over chance, chance at 0
                        g = g.assign(value=g["value"] - g["chance"], chance=0.0)
                    label = str(name) + (f", {n_epochs} epochs" if len(epochs) > 1 else "")
                    c, style = f"C{i % 10}", LINESTYLES[e % len(LINESTYLES)]
                    xs = g[x].to_numpy(dtype=float) * (100.0 if x == "sparsity" else 1.0)
                    if x == "sparsity" and (xs == 0).all() and str(name) == "dense":
                        ax.axhline(float(g["value"].iloc[0]) * scale, color="0.35", linestyle=":", linewidth=1.3,
                                   label=f"{label} (trained weights)")
                        continue
                    ax.errorbar(xs, g["value"] * scale, yerr=np.nan_to_num(g["sd"].to_numpy(dtype=float) * scale),
                                color=c, linestyle=style, marker=MARKERS[i % len(MARKERS)], markersize=4.5,
                                capsize=2.5, linewidth=1.5, label=label, zorder=3)
                    chance = g["chance"].to_numpy(dtype=float) * scale
                    if np.isfinite(chance).any():
                        band = np.nan_to_num(g["chance_sd"].to_numpy(dtype=float) * scale)
                        ax.fill_between(xs, chance - band, chance + band, color=c, alpha=0.12, linewidth=0)
                        ax.plot(xs, chance, color=c, linestyle="--", linewidth=0.9, marker=MARKERS[i % len(MARKERS)],
                                markersize=5, markerfacecolor="none", alpha=0.8,
                                label=f"{label}: chance" if row == 0 and col == 0 else None)
            if row == 0 and facet_col:
                ax.set_title(f"{facet_col} {value:g}" if isinstance(value, (float, np.floating)) else str(value))
            if unit in ("points", "Spearman rho") or minus:
                ax.axhline(0.0, color=RANDOM_COLOR, linewidth=0.8)
            ax.set_ylabel(_axis_label(metric, lay, unit, minus))  # every column: each has its own scale
    for col in range(len(facets)):
        axes[-1, col].set_xlabel("sparsity (% of weights removed)" if x == "sparsity" else x)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(Patch(color=RANDOM_COLOR, alpha=0.3))
    labels.append("band: chance ± 1 sd")
    # beside the panels, centred: at the top it ran into the two-line title
    fig.legend(handles, labels, loc="outside right center")
    heading = title or "The landscape across settings"
    what = (f"{family}: " if family else "") + "mean ± 1 sd (bars); chance per point (hollow, dashed) with its band"
    fig.suptitle(textwrap.fill(heading, 90) + "\n" + textwrap.fill(what, 100), fontsize=10)
    return fig


__all__ = ["landscape_vs"]
