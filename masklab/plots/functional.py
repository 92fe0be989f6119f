"""Figures of functional similarity (`masklab.analysis.functional`): prediction disagreement against Hamming
distance with its references, ensemble accuracy against the number of masks, linear CKA per layer against
random masks. Each takes DataFrames and returns a Figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from masklab.analysis.paths.barriers import spearman
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.plots._style import EXPECTED_COLOR, MASK_COLOR, RANDOM_COLOR, metric_axis, new_figure, require, styled


@styled
def disagreement_vs_distance(pairs: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Prediction disagreement of every mask pair against its normalised Hamming distance, with the two
    references as horizontal lines (their means over the pairs): predictors independent of the input with the
    masks' class rates (dashed), and independent given the true class (dotted).

    Parameters
    ----------
    pairs : DataFrame
        `masklab.analysis.functional.disagreement_pairs`: hamming_norm, disagreement, reference,
        reference_given_class (fractions; drawn in %).
    """
    require(pairs, ["hamming_norm", "disagreement", "reference", "reference_given_class"], "disagreement_vs_distance")
    x = pairs["hamming_norm"].to_numpy(dtype=float)
    y = pairs["disagreement"].to_numpy(dtype=float) * 100
    fig = new_figure(7.2, 4.4)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=18, color=MASK_COLOR, edgecolors="0.2", linewidths=0.3, zorder=3)
    given = float(pairs["reference_given_class"].mean()) * 100
    independent = float(pairs["reference"].mean()) * 100
    ax.axhline(given, color=EXPECTED_COLOR, linestyle=":", linewidth=1.3)
    ax.axhline(independent, color=RANDOM_COLOR, linestyle="--", linewidth=1.3)
    ax.set_xlabel(metric_axis("hamming_norm")[1])
    ax.set_ylabel("prediction disagreement (% of test samples)")
    ax.set_ylim(0, max(independent, float(np.nanmax(y)) if len(y) else 0) * 1.08 + 1)
    rho = spearman(x, y)
    shown = f"Spearman ρ = {rho:+.2f}" if np.isfinite(rho) else \
        f"no correlation shown: it needs at least {MIN_CORRELATION_PAIRS} pairs"
    handles = [Line2D([], [], linestyle="none", marker="o", color=MASK_COLOR, markeredgecolor="0.2",
                      label=f"mask pairs (n = {len(pairs)}; {shown})"),
               Line2D([], [], color=EXPECTED_COLOR, linestyle=":", label=f"errors independent given the class "
                      f"({given:.1f}%)"),
               Line2D([], [], color=RANDOM_COLOR, linestyle="--", label=f"independent of the input, same class "
                      f"rates ({independent:.1f}%)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=1)
    ax.set_title(title or "Do masks that differ in their bits predict differently?")
    return fig


@styled
def ensemble_accuracy_vs_k(curve: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Ensemble accuracy against the number of masks k (averaged softmax and majority vote: mean over the random
    orders, band min-max), with the members' mean and best accuracy (grey) in the same orders.

    Parameters
    ----------
    curve : DataFrame
        `masklab.analysis.functional.ensemble_accuracy_vs_k`: k, vote, acc_mean, acc_min, acc_max, member_mean,
        member_best, n_orders (fractions; drawn in %).
    """
    require(curve, ["k", "vote", "acc_mean", "member_mean", "member_best"], "ensemble_accuracy_vs_k")
    fig = new_figure(7.2, 4.4)
    ax = fig.add_subplot()
    styles = {"softmax": ("C0", "o", "averaged softmax"), "majority": ("C1", "s", "majority vote")}
    for vote, g in curve.groupby("vote", sort=False):
        colour, marker, label = styles.get(str(vote), ("C2", "^", str(vote)))
        ax.plot(g["k"], g["acc_mean"] * 100, color=colour, marker=marker, markersize=4, label=label, zorder=3)
        if {"acc_min", "acc_max"} <= set(g.columns):
            ax.fill_between(g["k"], g["acc_min"] * 100, g["acc_max"] * 100, color=colour, alpha=0.15, linewidth=0)
    first = curve[curve["vote"] == curve["vote"].iloc[0]]
    ax.plot(first["k"], first["member_best"] * 100, color="0.3", linestyle="--", linewidth=1.2,
            label="best member")
    ax.plot(first["k"], first["member_mean"] * 100, color=RANDOM_COLOR, linestyle=":", linewidth=1.4,
            label="mean member")
    ax.set_xlabel("masks in the ensemble (k)")
    ax.set_ylabel("test accuracy (%)")
    orders = int(curve["n_orders"].iloc[0]) if "n_orders" in curve.columns else None
    ax.legend(loc="lower right")
    ax.set_title(title or ("Do many masks beat one? Ensembles of the first k masks of "
                           f"{orders if orders else 'several'} random orders\n(mean; band: min-max over the orders)"))
    return fig


@styled
def cka_by_layer(summary: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Linear CKA between masks per layer (mean, min-max over pairs) beside subnetworks of the same weights
    with random masks of the same counts (mean +- 1 sd over their pairs).

    Parameters
    ----------
    summary : DataFrame
        `FunctionalSimilarity.cka_summary`: layer, mean, min, max, n_pairs, random_mean, random_sd.
    """
    require(summary, ["layer", "mean", "min", "max"], "cka_by_layer")
    x = np.arange(len(summary))
    fig = new_figure(max(5.0, 1.6 + 1.1 * len(summary)), 4.2)
    ax = fig.add_subplot()
    mean = summary["mean"].to_numpy(dtype=float)
    spread = np.vstack([mean - summary["min"].to_numpy(dtype=float), summary["max"].to_numpy(dtype=float) - mean])
    ax.errorbar(x - 0.08, mean, yerr=np.nan_to_num(spread), fmt="o", color=MASK_COLOR, capsize=3,
                label=f"mask pairs (mean, min-max; n = {int(summary['n_pairs'].iloc[0])})", zorder=3)
    if "random_mean" in summary.columns and summary["random_mean"].notna().any():
        ax.errorbar(x + 0.08, summary["random_mean"], yerr=np.nan_to_num(summary["random_sd"].to_numpy(dtype=float)),
                    fmt="s", color=RANDOM_COLOR, capsize=3, label="random masks, same weights (mean ± 1 sd)")
    ax.set_xticks(x, [str(v) for v in summary["layer"]])
    ax.set_xlabel("representation: a layer's output as the next layer sees it\n(the last: the logits)")
    ax.set_ylabel("linear CKA")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower left")
    ax.set_title(title or "Do masks build the same representations? Linear CKA per layer")
    return fig


__all__ = ["cka_by_layer", "disagreement_vs_distance", "ensemble_accuracy_vs_k"]
