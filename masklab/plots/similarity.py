"""Figures of the masks' similarity per layer and across settings, beside the random-mask baseline: the tables
of `masklab.analysis.summary` (one run) and of several runs side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from masklab.errors import UserError
from masklab.plots._style import MASK_COLOR, RANDOM_COLOR, metric_axis, new_figure, require, sentence, styled


@styled
def per_layer_similarity(summary: pd.DataFrame, metrics: Sequence[str] = ("matching", "jaccard"), *,
                         title: str | None = None) -> Figure:
    """Per-layer percent matching and Jaccard index of the mask pairs, beside the random-mask baseline.

    Parameters
    ----------
    summary : DataFrame
        Tidy, one row per (layer, metric): ``layer`` (name; layers are drawn in the order they first appear),
        ``metric`` ("matching", "jaccard", or any other metric name), ``mean`` (over mask pairs), either
        ``min`` and ``max`` (drawn as the range, preferred) or ``std`` (drawn as +-1 std), and ``baseline``
        (the random-mask expectation for that layer: ``k^2 + (1-k)^2`` for matching, ``k / (2 - k)`` for
        Jaccard at density k; NaN or absent: not drawn) with, optionally, ``chance_sd`` (the standard deviation
        of ONE random pair, `masklab.analysis.baselines.vs_chance`), drawn as a band of +-1 sd around it.
        Values as fractions; matching is shown in %.
        `masklab.analysis.summary.layer_summary` builds it from a long distance table.
    metrics : metrics to draw, one panel each, in this order (those absent from `summary` are skipped).
    """
    require(summary, ["layer", "metric", "mean"], "per_layer_similarity")
    present = [m for m in metrics if m in set(summary["metric"])]
    if not present:
        raise UserError(f"per_layer_similarity: none of the metrics {', '.join(metrics)} is in the table "
                        f"(it has {', '.join(map(str, summary['metric'].unique()))})")
    layers = list(dict.fromkeys(summary["layer"]))
    n_layers = len(layers)
    x = np.arange(n_layers)
    longest = max(len(str(v)) for v in layers)
    rotate = n_layers > 6 or longest * n_layers > 60
    width = min(16.0, max(6.0, 0.42 * n_layers + 2.5))
    fig = new_figure(width, 2.6 * len(present) + (0.09 * min(longest, 30) if rotate else 0.3) + 0.4)
    axes = fig.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, present):
        rows = summary[summary["metric"] == metric].set_index("layer").reindex(layers)
        scale, label = metric_axis(metric)
        mean = rows["mean"].to_numpy(dtype=float) * scale
        if {"min", "max"} <= set(rows.columns) and rows[["min", "max"]].notna().any().any():
            low = mean - rows["min"].to_numpy(dtype=float) * scale
            high = rows["max"].to_numpy(dtype=float) * scale - mean
            spread, what = np.vstack([low, high]), "min-max over pairs"
        elif "std" in rows.columns:
            std = rows["std"].to_numpy(dtype=float) * scale
            spread, what = np.vstack([std, std]), "+-1 std over pairs"
        else:
            spread, what = None, None
        ax.errorbar(x, mean, yerr=None if spread is None else np.nan_to_num(spread), fmt="o", color=MASK_COLOR,
                    ecolor=MASK_COLOR, elinewidth=1.2, capsize=3, markersize=5,
                    label="masks: mean" + (f" ({what})" if what else ""), zorder=3)
        if "baseline" in rows.columns and rows["baseline"].notna().any():
            base = rows["baseline"].to_numpy(dtype=float) * scale
            ax.hlines(base, x - 0.38, x + 0.38, colors=RANDOM_COLOR, linewidth=2.5,
                      label="random masks (expected)", zorder=2)
            if "chance_sd" in rows.columns and rows["chance_sd"].notna().any():
                band = np.nan_to_num(rows["chance_sd"].to_numpy(dtype=float)) * scale
                ax.bar(x, 2 * band, bottom=base - band, width=0.76, color=RANDOM_COLOR, alpha=0.3, linewidth=0,
                       label="random masks: +-1 sd of one pair", zorder=1)
        if str(layers[0]) == "all" and n_layers > 1:
            ax.axvline(0.5, color="0.7", linewidth=0.8)
        ax.set_ylabel(label)
        ax.set_title(sentence(label.split(" (")[0]) + " per layer")
        ax.grid(axis="x", visible=False)
    bottom = axes[-1]
    bottom.set_xlim(-0.6, n_layers - 0.4)
    shown = ["whole network" if str(v) == "all" else str(v) for v in layers]
    if rotate:
        bottom.set_xticks(x, shown, rotation=45, ha="right", rotation_mode="anchor")
    else:
        bottom.set_xticks(x, shown)
    bottom.set_xlabel("layer (model order)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(names) if width >= 9 else min(len(names), 2))
    fig.suptitle(title or "Similarity of mask pairs per layer vs random masks of the same density")
    return fig


@styled
def similarity_by_group(summary: pd.DataFrame, *, group: str = "method", panel: str | None = "sparsity",
                        metrics: Sequence[str] = ("matching", "jaccard"), title: str | None = None) -> Figure:
    """Per-layer similarity of several runs side by side: one panel per metric (rows) and per value of
    `panel` (columns, e.g. sparsity, whose random baseline differs), one colour per `group` (e.g. method).

    Parameters
    ----------
    summary : DataFrame
        `masklab.analysis.summary.layer_summary` rows of several runs stacked, with the extra columns named by
        `group` and `panel`: layer, metric, mean, min, max (range over mask pairs), baseline (random masks of
        the same per-layer counts; drawn as a black bar per layer, the mean over the panel's runs), group,
        panel.
    """
    require(summary, ["layer", "metric", "mean", group], "similarity_by_group")
    present = [m for m in metrics if m in set(summary["metric"])]
    panels = list(dict.fromkeys(summary[panel])) if panel else [None]
    groups = list(dict.fromkeys(summary[group]))
    layers = list(dict.fromkeys(summary["layer"]))
    x = np.arange(len(layers))
    names = ["whole network" if str(v) == "all" else str(v) for v in layers]
    longest = max(len(v) for v in names)
    rotate = len(layers) > 6 or longest * len(layers) > 36
    fig = new_figure(min(16.0, 1.2 + len(panels) * (0.55 * len(layers) * max(1, len(groups) / 3) + 1.2)),
                     2.7 * len(present) + 0.9 + (0.08 * min(longest, 30) if rotate else 0))
    axes = fig.subplots(len(present), len(panels), squeeze=False, sharex=True)
    offsets = (np.arange(len(groups)) - (len(groups) - 1) / 2) * min(0.8 / max(len(groups), 1), 0.18)
    for col, value in enumerate(panels):
        part = summary if panel is None else summary[summary[panel] == value]
        for row, metric in enumerate(present):
            ax = axes[row, col]
            scale, label = metric_axis(metric)
            rows = part[part["metric"] == metric]
            for i, name in enumerate(groups):
                g = rows[rows[group] == name].set_index("layer").reindex(layers)
                mean = g["mean"].to_numpy(dtype=float) * scale
                spread = None
                if {"min", "max"} <= set(g.columns):
                    spread = np.vstack([mean - g["min"].to_numpy(dtype=float) * scale,
                                        g["max"].to_numpy(dtype=float) * scale - mean])
                ax.errorbar(x + offsets[i], mean, yerr=None if spread is None else np.nan_to_num(spread), fmt="o",
                            color=f"C{i % 10}", markersize=4.5, capsize=2.5, elinewidth=1.1, label=str(name),
                            zorder=3)
            if "baseline" in rows.columns and rows["baseline"].notna().any():
                base = rows.groupby("layer", sort=False)["baseline"].mean().reindex(layers).to_numpy(dtype=float)
                ax.hlines(base * scale, x - 0.42, x + 0.42, colors=RANDOM_COLOR, linewidth=2.2,
                          label="random masks (expected)", zorder=2)
            if row == 0 and panel is not None:
                ax.set_title(f"{panel} {value:g}" if isinstance(value, (int, float, np.number)) else f"{value}")
            ax.set_ylabel(label)
            ax.grid(axis="x", visible=False)
        bottom = axes[-1, col]
        if rotate:
            bottom.set_xticks(x, names, rotation=40, ha="right", rotation_mode="anchor")
        else:
            bottom.set_xticks(x, names)
        bottom.set_xlabel("layer (model order)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 5))
    fig.suptitle(title or "Similarity of mask pairs per layer (mean, min-max over pairs) vs random masks")
    return fig


__all__ = ["per_layer_similarity", "similarity_by_group"]
