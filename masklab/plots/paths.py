"""Figures of paths between masks and through training: interpolation curves with their barriers, barrier
against Hamming distance, trajectories of masks during training. Each takes DataFrames, returns a Figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from masklab.analysis.paths.barriers import CURVE_KEYS, curve_barrier, curve_groups, spearman
from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
from masklab.errors import UserError
from masklab.plots._style import (
    EXPECTED_COLOR,
    MASK_COLOR,
    RANDOM_COLOR,
    as_percent,
    metric_axis,
    new_figure,
    require,
    styled,
)
from masklab.units import count


# ---- interpolation curves -----------------------------------------------------------------------------------
def _accuracy(frame: pd.DataFrame) -> np.ndarray:
    if "acc" in frame.columns:
        return frame["acc"].to_numpy(dtype=float)
    return 1.0 - frame["error"].to_numpy(dtype=float)


MAX_NAMED_CURVES = 6  # curves the legend names one by one; the others are drawn and summed up in one entry


@styled
def interpolation_curves(curve: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Loss and accuracy along interpolation paths between masks, with the linear interpolation of the ends
    (dashed) and the barriers marked (arrows; values in the legend).

    Parameters
    ----------
    curve : DataFrame
        ``masklab.analysis.interpolation.interpolate`` output (or several concatenated): ``t`` (0 at mask a,
        1 at mask b), ``loss``, ``acc`` (fraction or %) or ``error`` (fraction), and optionally ``path``,
        ``order``, ``point``, ``mask_a``, ``mask_b``: one line per (mask_a, mask_b, path, order); orders of
        one (mask_a, mask_b, path) share a colour and their barriers are averaged in the legend.

    The loss arrow at the peak of ``L(t) - linear(t)`` spans the loss barrier; the accuracy arrow runs from
    the mean of the two ends' accuracies (dotted tick) down to the lowest accuracy: the error barrier (in
    percentage points). Both are `masklab.analysis.paths.barriers.curve_barrier`'s, the analysis' own.
    """
    require(curve, ["t", "loss"], "interpolation_curves")
    if "acc" not in curve.columns and "error" not in curve.columns:
        raise UserError("interpolation_curves needs a column acc or error")
    keys = [k for k in CURVE_KEYS if k in curve.columns]
    colour_keys = [k for k in keys if k != "order"]
    _, factor = as_percent(_accuracy(curve))  # factor 100: acc given as a fraction; 1: already in %
    if "error" not in curve.columns:  # the barrier takes the error as a fraction
        curve = curve.assign(error=1.0 - curve["acc"].to_numpy(dtype=float) * factor / 100.0)
    groups = curve_groups(curve)
    fig = new_figure(10.5, 4.3)
    ax_loss, ax_acc = fig.subplots(1, 2)
    unit = " points"  # accuracy is drawn in %, so barriers of the error (a fraction) in percentage points
    colours: dict = {}
    barrier_sums: dict = {}
    single = len(groups) == 1
    for named, g in groups:
        ckey = tuple(named[k] for k in colour_keys)
        colour = colours.setdefault(ckey, f"C{len(colours) % 10}")
        g = g.sort_values(["t", "point"] if "point" in g.columns else ["t"], kind="stable")
        t = g["t"].to_numpy(dtype=float)
        loss = g["loss"].to_numpy(dtype=float)
        acc = _accuracy(g) * factor
        b = curve_barrier(g)
        sums = barrier_sums.setdefault(ckey, [0.0, 0.0, 0])
        sums[0] += b["loss_barrier"]
        sums[1] += b["error_barrier"]
        sums[2] += 1
        s = (t - t[0]) / (t[-1] - t[0]) if t[-1] > t[0] else np.zeros_like(t)
        ax_loss.plot(t, loss, color=colour, marker="o", markersize=2.5, linewidth=1.5)
        ax_loss.plot(t, (1 - s) * loss[0] + s * loss[-1], color=colour, linestyle="--", linewidth=1.0, alpha=0.8)
        ax_acc.plot(t, acc, color=colour, marker="o", markersize=2.5, linewidth=1.5)
        ax_acc.plot(t, (1 - s) * acc[0] + s * acc[-1], color=colour, linestyle="--", linewidth=1.0, alpha=0.8)
        tl = b["t_loss_barrier"]
        s_l = (tl - t[0]) / (t[-1] - t[0]) if t[-1] > t[0] else 0.0
        line_at = (1 - s_l) * loss[0] + s_l * loss[-1]
        _arrow(ax_loss, tl, line_at, line_at + b["loss_barrier"], colour,
               f"barrier {b['loss_barrier']:.3g} nats" if single else None)
        te = b["t_error_barrier"]
        ends = 0.5 * (acc[0] + acc[-1])
        ax_acc.hlines(ends, te - 0.04, te + 0.04, colors=colour, linestyles=":", linewidth=1.5)
        _arrow(ax_acc, te, ends, ends - b["error_barrier"] * 100.0, colour,
               f"barrier {b['error_barrier'] * 100.0:.3g}{unit}" if single else None)
    handles = []
    for ckey, colour in list(colours.items())[:MAX_NAMED_CURVES]:
        lb, eb, n = barrier_sums[ckey]
        name = _curve_name(dict(zip(colour_keys, ckey)))
        mean = f" (mean of {n} orders)" if n > 1 else ""
        handles.append(Line2D([], [], color=colour, marker="o", markersize=3,
                              label=f"{name}: loss barrier {lb / n:.3g} nats, error barrier {eb / n * 100.0:.3g}"
                                    f"{unit}{mean}"))
    if len(colours) > MAX_NAMED_CURVES:  # every curve is drawn; the legend names a few and sums up all
        sums = np.array([(lb / n, eb / n) for lb, eb, n in barrier_sums.values()])
        handles.append(Line2D([], [], color="none", label=f"... {len(colours) - MAX_NAMED_CURVES} more drawn; "
                              f"all {len(colours)}: mean loss barrier {sums[:, 0].mean():.3g} nats, mean error "
                              f"barrier {100.0 * sums[:, 1].mean():.3g}{unit}"))
    handles.append(Line2D([], [], color=EXPECTED_COLOR, linestyle="--", linewidth=1.0,
                          label="linear interpolation of the ends"))
    wide = sum(len(str(h.get_label())) for h in handles) > 100
    fig.legend(handles=handles, loc="outside lower center", ncol=1 if wide else len(handles))
    ax_loss.set_xlabel("t (0 = mask a, 1 = mask b)")
    ax_acc.set_xlabel("t (0 = mask a, 1 = mask b)")
    ax_loss.set_ylabel("loss (mean cross-entropy, nats)")
    ax_acc.set_ylabel("accuracy (%)")
    ax_loss.set_title("Loss along the path")
    ax_acc.set_title("Accuracy along the path")
    paths = sorted({str(p) for p in curve["path"]}) if "path" in curve.columns else []
    fig.suptitle(title or "Interpolation between masks" + (f" ({', '.join(paths)} path)" if paths else ""))
    return fig


def _curve_name(named: dict) -> str:
    parts = []
    if "mask_a" in named and "mask_b" in named:
        parts.append(f"masks {named['mask_a']}→{named['mask_b']}")
    if "path" in named:
        parts.append(str(named["path"]))
    return " ".join(parts) or "path"


def _arrow(ax, x: float, y0: float, y1: float, colour, text: str | None) -> None:
    ax.annotate("", xy=(x, y1), xytext=(x, y0),
                arrowprops={"arrowstyle": "<->", "color": colour, "linewidth": 1.2, "shrinkA": 0, "shrinkB": 0})
    if text:
        ax.annotate(text, xy=(x, 0.5 * (y0 + y1)), xytext=(6, 0), textcoords="offset points", va="center",
                    ha="left" if x < 0.75 else "right", color=colour, fontsize=8,
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


# ---- barrier vs distance ------------------------------------------------------------------------------------
@styled
def barrier_vs_distance(barriers: pd.DataFrame, *, x: str | None = None, group: str = "path",
                        title: str | None = None) -> Figure:
    """Loss and error barriers of mask pairs against their Hamming distance.

    Parameters
    ----------
    barriers : DataFrame
        ``masklab.analysis.interpolation.barrier_matrix`` output: one row per pair (and order), columns
        ``hamming`` (bits) and/or ``hamming_norm`` (fraction), ``loss_barrier``, ``error_barrier`` (fraction),
        optionally ``path`` (one colour each), ``mask_a``, ``mask_b``.
    x : "hamming_norm" (default when present) or "hamming".
    group : the column whose values get one colour each (default ``path``; e.g. a run label when the
        barriers of several runs are stacked).

    The legend, below the panels, gives each group's n and, from 10 pairs on
    (`masklab.analysis.thresholds`), its Spearman rank correlation with the distance for both barriers; below
    that only the points are drawn and the title says why. The grey dashed line is "no barrier".
    """
    x = x or ("hamming_norm" if "hamming_norm" in barriers.columns else "hamming")
    require(barriers, [x, "loss_barrier", "error_barrier"], "barrier_vs_distance")
    groups = list(barriers.groupby(group, sort=False)) if group in barriers.columns else [("pairs", barriers)]
    fig = new_figure(10.5, 4.4)
    axes = fig.subplots(1, 2)
    _, xlabel = metric_axis(x)
    specs = [("loss_barrier", 1.0, "loss barrier (cross-entropy, nats)", "Loss barrier"),
             ("error_barrier", 100.0, "error barrier (percentage points)", "Error barrier")]
    for ax, (column, scale, ylabel, heading) in zip(axes, specs):
        ax.axhline(0.0, color=RANDOM_COLOR, linestyle="--", linewidth=1.0)
        for i, (_, g) in enumerate(groups):
            ax.scatter(g[x].to_numpy(dtype=float), g[column].to_numpy(dtype=float) * scale, s=22,
                       color=f"C{i % 10}", edgecolors="0.2", linewidths=0.3, zorder=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{heading} vs distance")
    handles = [Line2D([], [], color=RANDOM_COLOR, linestyle="--", linewidth=1.0, label="no barrier")]
    for i, (name, g) in enumerate(groups):
        xs = g[x].to_numpy(dtype=float)
        rhos = [spearman(xs, g[column].to_numpy(dtype=float)) for column, *_ in specs]
        shown = "" if not np.isfinite(rhos).any() else \
            f"; Spearman ρ: loss {rhos[0]:+.2f}, error {rhos[1]:+.2f}"
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=5, color=f"C{i % 10}",
                              markeredgecolor="0.2", markeredgewidth=0.3, label=f"{name} (n = {len(g)}{shown})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3))
    heading = title or "Barriers between masks against their Hamming distance"
    fewest = min(len(g) for _, g in groups)
    if fewest < MIN_CORRELATION_PAIRS:
        heading += (f"\n(n = {count(fewest, 'pair')}{' in a group' if len(groups) > 1 else ''}: too few for a "
                    f"correlation, which needs at least {MIN_CORRELATION_PAIRS}; only the points are shown)")
    fig.suptitle(heading)
    return fig


# ---- trajectories -------------------------------------------------------------------------------------------
@styled
def trajectory_curves(traj: pd.DataFrame, *, metric: str = "hamming_norm", baseline: float | None = None,
                      title: str | None = None) -> Figure:
    """Distance of each mask's training snapshots to its final mask (and to the other masks) against epoch.

    Parameters
    ----------
    traj : DataFrame
        One row per (mask, snapshot): ``mask_id``, ``epoch``, ``distance_to_final``, optionally
        ``distance_to_others_mean`` (mean distance to the other masks' snapshots of the same epoch).
    metric : the distance's name, for the axis label (default normalised Hamming).
    baseline : float, optional
        Random-mask expectation of the distance, drawn dashed (where two independent masks would be).
    """
    require(traj, ["mask_id", "epoch", "distance_to_final"], "trajectory_curves")
    others = "distance_to_others_mean" in traj.columns and traj["distance_to_others_mean"].notna().any()
    columns = [("distance_to_final", "Distance to the mask's own final mask")]
    if others:
        columns.append(("distance_to_others_mean", "Mean distance to the other masks"))
    scale, ylabel = metric_axis(metric)
    fig = new_figure(5.2 * len(columns) + 0.6, 4.2)
    axes = fig.subplots(1, len(columns), squeeze=False, sharey=True)[0]
    n_masks = traj["mask_id"].nunique()
    for ax, (column, heading) in zip(axes, columns):
        for _, g in traj.groupby("mask_id", sort=True):
            g = g.sort_values("epoch")
            ax.plot(g["epoch"], g[column] * scale, color=MASK_COLOR, alpha=0.35, linewidth=0.9)
        mean = traj.groupby("epoch", sort=True)[column].mean() * scale
        ax.plot(mean.index, mean.to_numpy(), color="black", linewidth=2.0, marker="o", markersize=3,
                label=f"mean over {n_masks} masks")
        if baseline is not None:
            ax.axhline(baseline * scale, color=EXPECTED_COLOR, linestyle="--", linewidth=1.2,
                       label="random masks (expected)")
        ax.plot([], [], color=MASK_COLOR, alpha=0.5, label="one mask")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(heading)
        ax.legend(loc="best", fontsize=7)
    fig.suptitle(title or "Mask trajectories during training")
    return fig


__all__ = ["barrier_vs_distance", "interpolation_curves", "trajectory_curves"]
