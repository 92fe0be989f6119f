"""Figures of the mask landscape: distance heatmap with dendrogram, per-layer similarity against the random
baseline, distance histogram against random masks, embedding scatter, consensus histogram against the
binomial. Each function takes DataFrames and returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

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

MAX_TICK_LABELS = 40


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---- distance heatmap -------------------------------------------------------------------------------------
@styled
def distance_heatmap(square: pd.DataFrame, linkage: np.ndarray | None = None, order: Sequence[int] | None = None,
                     *, metric: str = "hamming_norm", baseline: float | None = None,
                     title: str | None = None) -> Figure:
    """Heatmap of the pairwise distances, ordered by the clustering, with its dendrogram on top.

    Parameters
    ----------
    square : DataFrame
        N x N distances indexed by mask id (``distances(masks, metric=..., form="square")``).
    linkage : ndarray, optional
        scipy linkage matrix of the same masks in the same order (``clustering.linkage_matrix(square)``):
        drawn as a dendrogram, and its leaf order orders the heatmap.
    order : sequence of mask ids, optional
        Explicit order when no `linkage` is given (``clustering.dendrogram_order``); default: as given.
    metric : str
        Name of the metric, for the colour-bar label (matching is shown in %).
    baseline : float, optional
        The random-mask expectation of the metric: marked on the colour bar (dashed, white halo), whose range
        is widened to hold it well inside, and on the dendrogram's height axis when the linkage's heights are
        distances (single, complete or average linkage; not Ward's, whose heights are on another scale).

    The diagonal (self-distances) is left blank so that it does not set the colour range. The dendrogram's
    height axis is zoomed to the merges (and chance): near-equidistant masks merge within a narrow band.
    """
    if not isinstance(square, pd.DataFrame):
        square = pd.DataFrame(np.asarray(square))
    n = len(square)
    if n == 0 or square.shape[0] != square.shape[1]:
        raise UserError(f"distance_heatmap needs a square, non-empty distance table; got shape {square.shape}")
    ids = np.asarray(square.index)
    if linkage is not None:
        from scipy.cluster import hierarchy

        if len(linkage) != n - 1:
            raise UserError(f"the linkage matrix is for {len(linkage) + 1} masks but the table has {n}")
        positions = hierarchy.leaves_list(linkage)
    elif order is not None:
        lookup = {v: i for i, v in enumerate(ids.tolist())}
        missing = [o for o in order if o not in lookup]
        if missing or len(order) != n:
            raise UserError(f"`order` must list every mask id of the table once; unknown: {missing[:5]}")
        positions = np.array([lookup[o] for o in order])
    else:
        positions = np.arange(n)
    scale, label = metric_axis(metric)
    values = square.to_numpy(dtype=np.float64)[np.ix_(positions, positions)] * scale
    np.fill_diagonal(values, np.nan)
    off = values[np.isfinite(values)]
    chance = baseline * scale if baseline is not None and np.isfinite(baseline) else None
    lo, hi = _colour_range(off, chance)

    side = min(9.0, max(5.0, 0.14 * n + 3.0))
    fig = new_figure(side + 1.2, side + (1.2 if linkage is not None else 0.3))
    if linkage is not None:
        grid = fig.add_gridspec(2, 2, height_ratios=[1, 4.5], width_ratios=[30, 1])
        ax_tree = fig.add_subplot(grid[0, 0])
        ax = fig.add_subplot(grid[1, 0])
        cax = fig.add_subplot(grid[1, 1])
        heights = np.asarray(linkage, dtype=np.float64)[:, 2] * scale
        in_distance_units = off.size > 0 and heights.max() <= off.max() * (1 + 1e-9) + 1e-12
        _draw_dendrogram(ax_tree, linkage, n, baseline if chance is not None and in_distance_units else None)
    else:
        grid = fig.add_gridspec(1, 2, width_ratios=[30, 1])
        ax, cax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    image = ax.imshow(values, cmap=_cmap("viridis"), vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
    ax.grid(False)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    shown = [str(v) for v in ids[positions]]
    if n <= MAX_TICK_LABELS:
        ax.set_xticks(np.arange(n), shown, rotation=90, fontsize=7 if n > 20 else 8)
        ax.set_yticks(np.arange(n), shown, fontsize=7 if n > 20 else 8)
        ax.set_xlabel("mask id (dendrogram order)" if linkage is not None else "mask id")
        ax.set_ylabel("mask id")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{n} masks ({'dendrogram' if linkage is not None else 'given'} order)")
        ax.set_ylabel(f"{n} masks")
    cax.set_label("<colorbar>")
    bar = fig.colorbar(image, cax=cax)
    bar.set_label(label + ("\n(dashed: random masks, expected)" if chance is not None else ""))
    if chance is not None:  # inside the range (`_colour_range`), with a white halo so it shows on any colour
        bar.ax.axhline(chance, color="white", linewidth=3.5)
        bar.ax.axhline(chance, color=EXPECTED_COLOR, linestyle="--", linewidth=1.5, label="chance")
    heading = title or f"Pairwise {label.split(' (')[0]} of {n} masks"
    if linkage is not None:
        fig.suptitle(heading)
    else:
        ax.set_title(heading)
    return fig


def _colour_range(values: np.ndarray, chance: float | None) -> tuple[float, float]:
    """The colour range of the heatmap: the off-diagonal values, widened to hold the chance level with a
    margin of a tenth of the range, so that its marker never sits on the colour bar's edge."""
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if chance is not None:
        lo, hi = min(lo, chance), max(hi, chance)
    if hi <= lo:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-9), hi + 0.5 * max(abs(hi), 1e-9)
    if chance is not None:
        margin = 0.1 * (hi - lo)
        lo, hi = min(lo, chance - margin), max(hi, chance + margin)
    return lo, hi


def _cmap(name: str):
    return matplotlib.colormaps[name].with_extremes(bad="0.92")


def _draw_dendrogram(ax, linkage: np.ndarray, n: int, chance: float | None = None) -> None:
    """The dendrogram, its height axis zoomed to the merges (masks about equally far apart merge within a
    narrow band, which on a 0-based axis is a flat comb), with the random-mask distance dashed."""
    from scipy.cluster import hierarchy

    hierarchy.dendrogram(linkage, ax=ax, no_labels=True, link_color_func=lambda _k: "0.25")
    ax.set_label("dendrogram")
    ax.set_xlim(0, 10 * n)
    ax.set_xticks([])
    ax.grid(False)
    ax.spines[["top", "right", "bottom"]].set_visible(False)
    heights = np.asarray(linkage, dtype=np.float64)[:, 2]
    lo, hi = float(heights.min()), float(heights.max())
    if chance is not None:
        lo, hi = min(lo, chance), max(hi, chance)
    span = max(hi - lo, 1e-6 * max(abs(hi), 1.0))
    ax.set_ylim(max(0.0, lo - 0.25 * span), hi + 0.12 * span)
    if chance is not None:
        ax.axhline(chance, color=EXPECTED_COLOR, linestyle="--", linewidth=1.2, label="chance")
    ax.set_ylabel("merge distance\n(zoomed)" if lo - 0.25 * span > 0 else "merge\ndistance")


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
        Jaccard at density k; NaN or absent: not drawn). Values as fractions; matching is shown in %.
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
        if str(layers[0]) == "all" and n_layers > 1:
            ax.axvline(0.5, color="0.7", linewidth=0.8)
        ax.set_ylabel(label)
        ax.set_title(_sentence(label.split(" (")[0]) + " per layer")
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
    fig.legend(handles, names, loc="outside lower center", ncol=len(names))
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


# ---- distance histogram ---------------------------------------------------------------------------------------
def _values(data, layer: str | None, metric: str | None, what: str) -> tuple[np.ndarray, str | None]:
    """Values (and the metric name when the table says) of a long distance table, Series or array."""
    if data is None:
        return np.empty(0), None
    if isinstance(data, pd.DataFrame):
        require(data, ["value"], what)
        if layer is not None and "layer" in data.columns:
            data = data[data["layer"] == layer]
        if "metric" in data.columns:
            if metric is not None:
                data = data[data["metric"] == metric]
            names = data["metric"].unique()
            if len(names) > 1:
                raise UserError(f"{what}: the table holds metrics {', '.join(map(str, names))}; "
                                "choose one with metric=")
            metric = str(names[0]) if len(names) else metric
        return data["value"].to_numpy(dtype=float), metric
    return np.asarray(data, dtype=float).ravel(), metric


@styled
def distance_histogram(observed, random=None, expected: float | None = None, *, metric: str | None = None,
                       layer: str | None = "all", bins: int = 40, title: str | None = None) -> Figure:
    """Histogram of the masks' pairwise distances beside the distribution of random-mask distances and the
    closed-form expectation.

    Parameters
    ----------
    observed : DataFrame (long distance table: value, and optionally layer and metric), Series or array
        One value per mask pair (``masklab.distances(masks, metric=...)``). Rows of other layers than
        `layer` and of other metrics than `metric` are dropped.
    random : same form, optional
        Pair distances of random masks with the same per-layer counts
        (``masklab.analysis.random_sets.random_baseline_samples(masks)``).
    expected : float, optional
        The closed-form random expectation of the metric for that layer (the `metric` column of
        ``masklab.random_baseline(masks)`` at that layer, e.g. normalised Hamming ``1 - k^2 - (1-k)^2``).
    metric : str, optional
        The metric to draw (needed when the tables hold several); default: the table's only one. Also names
        the axis (matching is shown in %).
    """
    obs, name = _values(observed, layer, metric, "distance_histogram")
    metric = metric or name
    rnd, rname = _values(random, layer, metric, "distance_histogram (random)")
    metric = metric or rname
    if obs.size == 0:
        raise UserError(f"distance_histogram: no observed distances to draw (layer {layer!r}, metric {metric!r})")
    scale, label = metric_axis(metric)
    obs, rnd = obs * scale, rnd * scale
    both = np.concatenate([obs, rnd, [] if expected is None else [expected * scale]])
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
    edges = np.linspace(lo, hi, int(bins) + 1)
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    ax.hist(obs, bins=edges.tolist(), density=True, color=MASK_COLOR, alpha=0.65,
            label=f"mask pairs (n = {obs.size:,})")
    if rnd.size:
        ax.hist(rnd, bins=edges.tolist(), density=True, histtype="step", color=RANDOM_COLOR, linewidth=1.8,
                label=f"random-mask pairs (n = {rnd.size:,})")
    ax.axvline(float(obs.mean()), color=MASK_COLOR, linewidth=1.5, label=f"mask mean {obs.mean():.4g}")
    if expected is not None:
        ax.axvline(expected * scale, color=EXPECTED_COLOR, linestyle="--", linewidth=1.5,
                   label=f"random expectation {expected * scale:.4g}")
    ax.set_xlabel(label)
    ax.set_ylabel("probability density (per unit of x)")
    where = "" if layer in (None, "all") else f", layer {layer}"
    ax.set_title(title or f"Pairwise {label.split(' (')[0]}: masks vs random masks{where}")
    handles, names = ax.get_legend_handles_labels()  # below the axes: never on the histograms
    fig.legend(handles, names, loc="outside lower center", ncol=2)
    return fig


# ---- embedding scatter --------------------------------------------------------------------------------------
def _is_categorical(series: pd.Series) -> bool:
    name = str(series.name)
    return (name.startswith("cluster") or name in ("method", "run", "source", "recycle")
            or not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def _colour_label(column: str) -> str:
    labels = {"test_acc": "test accuracy (%)", "best_test_acc": "best test accuracy (%)",
              "train_acc": "train accuracy (%)", "test_loss": "test loss (cross-entropy, nats)",
              "cluster_average": "cluster (average linkage)", "cluster_ward": "cluster (Ward linkage)",
              "cluster_hdbscan": "cluster (HDBSCAN)", "cluster_complete": "cluster (complete linkage)",
              "cluster_single": "cluster (single linkage)", "side": "run (A or B)"}
    return labels.get(column, column.replace("_", " "))


@styled
def embedding_scatter(points: pd.DataFrame, color_by: Sequence[str] = ("test_acc", "cluster_average"), *,
                      title: str | None = None) -> Figure:
    """Scatter of a 2-D embedding of the masks, one panel per colouring (default: test accuracy and cluster).

    Parameters
    ----------
    points : DataFrame
        ``x``, ``y`` (from ``embedding.embed`` or ``embed_with_reference``) merged with the mask table and the
        cluster labels on mask_id, so that it holds the `color_by` columns. Optional ``method`` ("umap",
        "mds", "tsne": names the axes) and ``source`` ("mask" / "random": random masks are drawn as grey
        crosses in every panel, the reference cloud of "no structure").
    color_by : columns to colour by, one panel each. Accuracy columns given as fractions are shown in %
        ("test accuracy (%)"); columns named cluster_* (or non-numeric) get discrete colours, -1 is "noise".
    """
    require(points, ["x", "y"], "embedding_scatter")
    known = {"umap": "UMAP", "mds": "MDS", "tsne": "t-SNE"}
    methods = set(points["method"].astype(str)) if "method" in points.columns else set()
    axis_name = known[methods.pop()] if len(methods) == 1 and methods <= set(known) else "embedding"
    is_random = (points["source"] == "random").to_numpy() if "source" in points.columns \
        else np.zeros(len(points), dtype=bool)
    real, ref = points[~is_random], points[is_random]
    chosen: list[str | None] = [c for c in color_by if c in points.columns]
    panels = chosen or [None]
    fig = new_figure(4.6 * len(panels) + 0.6, 4.3)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, column in zip(axes, panels):
        if len(ref):
            ax.scatter(ref["x"], ref["y"], marker="x", s=14, color=RANDOM_COLOR, linewidths=0.8,
                       label="random masks (same per-layer counts)", zorder=1)
        if column is None:
            ax.scatter(real["x"], real["y"], s=22, color=MASK_COLOR, label="masks", zorder=2)
            ax.set_title(f"{axis_name} of {len(real)} masks")
        elif _is_categorical(points[column]):
            _categorical(ax, real, column)
            ax.set_title(_sentence(_colour_label(column)))
        else:
            values = real[column].to_numpy(dtype=float)
            shown = as_percent(values)[0] if "acc" in column else values
            dots = ax.scatter(real["x"], real["y"], c=shown, s=24, cmap="viridis", edgecolors="0.2",
                              linewidths=0.3, zorder=2)
            fig.colorbar(dots, ax=ax, label=_colour_label(column), shrink=0.9)
            ax.set_title(_sentence(_colour_label(column).split(" (")[0]))
        ax.set_xlabel(f"{axis_name} 1 (no unit)")
        ax.set_ylabel(f"{axis_name} 2 (no unit)")
        handles, names = ax.get_legend_handles_labels()
        own = [(h, n) for h, n in zip(handles, names) if not n.startswith("random masks")]
        if own and column is not None:
            ax.legend(*zip(*own), loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 if len(own) <= 12 else 2,
                      fontsize=7, borderaxespad=0.0)
    # the random cloud (and plain masks) are the same in every panel: one legend for the figure
    shared = [(h, n) for h, n in zip(*axes[0].get_legend_handles_labels())
              if n.startswith("random masks") or panels == [None]]
    if shared:
        fig.legend(*zip(*shared), loc="outside lower center", ncol=len(shared))
    fig.suptitle(title or f"{axis_name} embedding of the masks ({len(real)} masks"
                 + (f", {len(ref)} random)" if len(ref) else ")"))
    return fig


def _categorical(ax, frame: pd.DataFrame, column: str) -> None:
    values = frame[column]
    if pd.api.types.is_float_dtype(values) and np.all(np.mod(values.dropna(), 1) == 0):
        values = values.astype("Int64")  # integer labels that a merge turned into floats
    cats = sorted(values.dropna().unique(), key=lambda v: (isinstance(v, str), v))
    palette = [f"C{i}" for i in range(10)] if len(cats) <= 10 else \
        [matplotlib.colormaps["tab20"](i % 20) for i in range(len(cats))]
    colour_index = 0
    for cat in cats:
        rows = frame[(values == cat).fillna(False).to_numpy(dtype=bool)]
        noise = isinstance(cat, (int, np.integer, float)) and cat < 0
        colour = "0.75" if noise else palette[colour_index % len(palette)]
        colour_index += 0 if noise else 1
        name = "noise" if noise else (f"cluster {cat}" if column.startswith("cluster") else str(cat))
        ax.scatter(rows["x"], rows["y"], s=24, color=colour, edgecolors="0.2", linewidths=0.3, label=name,
                   zorder=2)


# ---- consensus histogram ------------------------------------------------------------------------------------
MAX_CONSENSUS_PANELS = 16
CONSENSUS_COLUMNS = 2


@styled
def consensus_bars(counts: pd.DataFrame, *, layers: Sequence[str] | None = None, log: bool = True,
                        title: str | None = None) -> Figure:
    """How many of the N masks keep each weight, against independent random masks (Binomial(N, k)).

    Parameters
    ----------
    counts : DataFrame
        ``masklab.analysis.consensus.consensus_histogram(masks)``: one row per (layer, m) with ``layer``
        ("all" for the whole network, then the layers), ``n_masks_keeping`` (m = 0..N), ``n_weights`` (weights
        of the layer kept by exactly m masks) and ``expected`` (the Binomial(N, k) expectation of that
        count; optional). Layers are drawn in the order they first appear.
    layers : the layers to draw, one panel each. Default: every layer when there are at most 16 (with
        "all"), else the whole network only.
    log : log-scaled counts (expected counts below half a weight are off the scale).
    """
    require(counts, ["layer", "n_masks_keeping", "n_weights"], "consensus_bars")
    present = list(dict.fromkeys(counts["layer"]))
    if layers is None:
        names = present if len(present) <= MAX_CONSENSUS_PANELS else [n for n in present if str(n) == "all"][:1] \
            or present[:1]
    else:
        names = list(layers)
        unknown = [n for n in names if n not in present]
        if unknown:
            raise UserError(f"consensus_bars: no rows for layers {unknown}; the table has {present}")
        if len(names) > MAX_CONSENSUS_PANELS:
            raise UserError(f"consensus_bars draws at most {MAX_CONSENSUS_PANELS} panels; "
                            f"{len(names)} layers given")
    # at most two panels a row: the figure stays about as wide as a page (1100 px at 150 dpi) and its labels
    # readable there; four in a row made a 2040 x 525 strip whose labels shrank to nothing on the page
    ncols = min(CONSENSUS_COLUMNS, len(names))
    nrows = -(-len(names) // ncols)
    fig = new_figure(3.6 * ncols + 0.3, 2.7 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    n_masks = int(counts["n_masks_keeping"].max())
    for ax, name in zip(axes, names):
        g = counts[counts["layer"] == name].sort_values("n_masks_keeping")
        m = g["n_masks_keeping"].to_numpy()
        observed = g["n_weights"].to_numpy(dtype=float)
        ax.bar(m, observed, width=0.85, color=MASK_COLOR, alpha=0.75, label="masks (observed)")
        expected = g["expected"].to_numpy(dtype=float) if "expected" in g.columns else np.full(len(g), np.nan)
        if np.isfinite(expected).any():
            ax.plot(m, expected, color=EXPECTED_COLOR, linestyle="--", marker=".", markersize=4,
                    label=f"independent random masks: Binomial({n_masks}, k)")
        if log:
            ax.set_yscale("log")
            top = float(np.nanmax(np.concatenate([observed, expected, [1.0]])))
            ax.set_ylim(0.5, top * 2.0)
            # decades only, written as plain counts: minor ticks and mathtext labels (10^k) cost most of
            # the figure's drawing time and say no more
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(_count_label))
        ax.set_xlabel(f"masks keeping the weight (m of {n_masks})")
        ax.set_ylabel("weights (count)")
        ax.set_title("whole network" if str(name) == "all" else str(name))
        ax.grid(axis="x", visible=False)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels) if ncols > 1 else 1)
    fig.suptitle(title or "Consensus: how many masks keep each weight")
    return fig


def _count_label(value: float, _position) -> str:
    """A tick of a log-scaled count: 1, 10, 100, 1,000, 10k, 100k, 1M, ..."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


__all__ = ["consensus_bars", "distance_heatmap", "distance_histogram",
           "embedding_scatter", "per_layer_similarity", "similarity_by_group"]
