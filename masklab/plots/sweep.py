"""Accuracy against sparsity per method (from `masklab sweep`), beside published numbers."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from masklab.plots._style import as_percent, new_figure, require, styled

MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@styled
def accuracy_vs_sparsity(sweep: pd.DataFrame, *, title: str | None = None, chance: float | None = None) -> Figure:
    """Test accuracy against sparsity, one colour per method; published numbers as hollow markers on a
    dashed line of the same colour; the trained dense network and chance as horizontal reference lines.

    Parameters
    ----------
    sweep : DataFrame
        One row per (method, sparsity): ``method`` (e.g. "edge-popup", "biprop+iwr"), ``sparsity`` (fraction
        of weights removed, or %), ``acc_mean`` (mean test accuracy over masks, fraction or %), optionally
        ``acc_std`` (same unit as acc_mean; drawn as a band of +-1 std over the cell's masks), ``published``
        (the paper's accuracy, fraction or %, NaN where none), ``n`` (masks per cell), ``epochs`` and
        ``chance`` (1 / classes, a fraction), which the title and the chance line state. Fractions (all
        values <= 1) are converted to %. A ``dense`` row (trained weights, no sparsity) is drawn as a
        horizontal line.
    title : the first line of the title (default "Accuracy vs sparsity"); a second line states the epochs,
        the masks per cell and what the band is, as far as the table says.
    chance : accuracy of guessing (a fraction); default the table's ``chance`` column.
    """
    require(sweep, ["method", "sparsity", "acc_mean"], "accuracy_vs_sparsity")
    sparsity, _ = as_percent(sweep["sparsity"])
    acc, factor = as_percent(sweep["acc_mean"])
    std = sweep["acc_std"].to_numpy(dtype=float) * factor if "acc_std" in sweep.columns else None
    published = as_percent(sweep["published"])[0] if "published" in sweep.columns else None
    if chance is None and "chance" in sweep.columns and sweep["chance"].notna().any():
        chance = float(sweep["chance"].dropna().mean())
    frame = pd.DataFrame({"method": sweep["method"].astype(str).to_numpy(), "sparsity": sparsity, "acc": acc,
                          "std": np.nan if std is None else std,
                          "published": np.nan if published is None else published})
    fig = new_figure(7.4, 4.6)
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
        dense_acc = float(dense["acc"].mean())
        ax.axhline(dense_acc, color="0.35", linestyle=":", linewidth=1.4,
                   label=f"dense, trained weights ({dense_acc:.1f}%)")
    # the y-axis spans what is measured (not from 0, nor down to chance: 78-84% would be a sliver)
    lo, hi = accuracy_range(frame, dense)
    if chance is not None and np.isfinite(chance):
        where = "" if lo <= 100 * chance <= hi else ", below the axis" if 100 * chance < lo else ", above the axis"
        ax.axhline(100 * chance, color="0.55", linestyle="--", linewidth=1.2,
                   label=(f"chance (1 / {round(1 / chance)} classes: {100 * chance:.0f}%{where})" if chance > 0
                          else f"chance{where}"))
    ax.set_ylim(lo, hi)
    ax.set_xlabel("sparsity (% of weights removed)")
    ax.set_ylabel("test accuracy (%)")
    heading = title or "Accuracy vs sparsity"
    details = _details(sweep, std is not None)
    # the legend takes the right of the figure: wrap long titles
    ax.set_title(textwrap.fill(heading, 58, break_on_hyphens=False)
                 + ("\n" + textwrap.fill(details, 70, break_on_hyphens=False) if details else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def accuracy_range(frame: pd.DataFrame, dense: pd.DataFrame) -> tuple[float, float]:
    """The y-range (in %) of the sweep figure: every accuracy drawn (means +-1 std, published, dense), with a
    margin of a tenth of their span (at least 1 percentage point), within 0-100%."""
    values = np.concatenate([frame["acc"].to_numpy(dtype=float),
                             (frame["acc"] - frame["std"].fillna(0)).to_numpy(dtype=float),
                             (frame["acc"] + frame["std"].fillna(0)).to_numpy(dtype=float),
                             frame["published"].to_numpy(dtype=float), dense["acc"].to_numpy(dtype=float)])
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 100.0
    low, high = float(values.min()), float(values.max())
    pad = max(0.1 * (high - low), 1.0)
    return max(0.0, low - pad), min(100.0, high + pad)


def _details(sweep: pd.DataFrame, band: bool) -> str:
    """"20 epochs, 3 seeds (masks) per cell; band: ±1 std over a cell's masks", as far as the table says."""
    parts = []
    if "epochs" in sweep.columns and sweep["epochs"].notna().any():
        epochs = sorted({int(e) for e in sweep["epochs"].dropna()})
        parts.append(f"{_span(epochs)} epoch{'s' if epochs[-1] != 1 else ''}")
    if "n" in sweep.columns and sweep["n"].notna().any():
        n = sorted({int(v) for v in sweep["n"].dropna()})
        parts.append(f"{_span(n)} seed{'s' if n[-1] != 1 else ''} (masks) per cell")
    text = ", ".join(parts)
    if band:
        text += ("; " if text else "") + "band: ±1 std over a cell's masks"
    return text


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


__all__ = ["accuracy_vs_sparsity"]
