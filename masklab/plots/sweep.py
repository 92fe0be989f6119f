"""Accuracy against sparsity per method (from `masklab sweep`), beside published numbers."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from masklab.plots._style import as_percent, new_figure, require, styled

MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@styled
def accuracy_vs_sparsity(sweep: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Test accuracy against sparsity, one colour per method; published numbers as hollow markers on a
    dashed line of the same colour.

    Parameters
    ----------
    sweep : DataFrame
        One row per (method, sparsity): ``method`` (e.g. "edge-popup", "biprop+iwr"), ``sparsity`` (fraction
        of weights removed, or %), ``acc_mean`` (mean test accuracy over masks, fraction or %), optionally
        ``acc_std`` (same unit as acc_mean; drawn as a band of +-1 std) and ``published`` (the paper's
        accuracy, fraction or %, NaN where none). Fractions (all values <= 1) are converted to %.
        A ``dense`` row (trained weights, no sparsity) is drawn as a horizontal reference line.
    """
    require(sweep, ["method", "sparsity", "acc_mean"], "accuracy_vs_sparsity")
    sparsity, _ = as_percent(sweep["sparsity"])
    acc, factor = as_percent(sweep["acc_mean"])
    std = sweep["acc_std"].to_numpy(dtype=float) * factor if "acc_std" in sweep.columns else None
    published = as_percent(sweep["published"])[0] if "published" in sweep.columns else None
    frame = pd.DataFrame({"method": sweep["method"].astype(str).to_numpy(), "sparsity": sparsity, "acc": acc,
                          "std": np.nan if std is None else std,
                          "published": np.nan if published is None else published})
    fig = new_figure(6.8, 4.4)
    ax = fig.add_subplot()
    dense = frame[frame["method"] == "dense"]
    frame = frame[frame["method"] != "dense"]
    for i, (method, g) in enumerate(frame.groupby("method", sort=False)):
        g = g.sort_values("sparsity")
        colour, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]  # markers keep coinciding lines apart
        ax.plot(g["sparsity"], g["acc"], color=colour, marker=marker, markersize=5, linewidth=1.6,
                label=f"{method} (masklab)")
        if g["std"].notna().any():
            ax.fill_between(g["sparsity"], g["acc"] - g["std"].fillna(0), g["acc"] + g["std"].fillna(0),
                            color=colour, alpha=0.18, linewidth=0)
        pub = g.dropna(subset=["published"])
        if len(pub):
            ax.plot(pub["sparsity"], pub["published"], color=colour, linestyle="--", marker=marker, markersize=6,
                    markerfacecolor="none", markeredgewidth=1.4, linewidth=1.1, label=f"{method} (published)")
    if len(dense):  # the trained dense network has no sparsity: a reference line across the plot
        acc = float(dense["acc"].mean())
        ax.axhline(acc, color="0.35", linestyle=":", linewidth=1.4, label=f"dense, trained weights ({acc:.1f}%)")
    ax.set_xlabel("sparsity (% of weights removed)")
    ax.set_ylabel("test accuracy (%)")
    title = title or "Accuracy vs sparsity" + (" (band: ±1 std over masks)" if std is not None else "")
    ax.set_title(textwrap.fill(title, 62))  # the legend takes the right of the figure: wrap long titles
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


__all__ = ["accuracy_vs_sparsity"]
