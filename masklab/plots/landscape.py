"""Figures of the distances between masks: the ordered heatmap with its dendrogram, and the histogram of the
pairs' distances against random masks. Each function takes DataFrames and returns a matplotlib Figure.
(Per-layer similarity: plots/similarity.py; the embedding: plots/embedding.py; consensus: plots/consensus.py.)"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from scipy.cluster import hierarchy

from masklab.errors import UserError
from masklab.plots._style import (
    EXPECTED_COLOR,
    MASK_COLOR,
    RANDOM_COLOR,
    metric_axis,
    new_figure,
    require,
    styled,
)

MAX_TICK_LABELS = 40
MAX_CELLS = 500  # the heatmap draws at most this many cells per side (block means above)


# ---- distance heatmap -------------------------------------------------------------------------------------
def heatmap_block(n: int, max_cells: int = MAX_CELLS) -> int:
    """Masks per cell side when `distance_heatmap` draws `n` masks in at most `max_cells` x `max_cells` cells."""
    return max(1, -(-int(n) // max(1, int(max_cells))))


def _block_means(values: np.ndarray, block: int) -> np.ndarray:
    """Means of block x block cells of a square matrix (NaN left out; the last cells may be smaller)."""
    if block == 1:
        return values
    n = len(values)
    m = -(-n // block)
    padded = np.full((m * block, m * block), np.nan)
    padded[:n, :n] = values
    cells = padded.reshape(m, block, m, block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (a one-mask diagonal cell)
        return np.nanmean(cells, axis=(1, 3))


@styled
def distance_heatmap(square: pd.DataFrame, linkage: np.ndarray | None = None, order: Sequence[int] | None = None,
                     *, metric: str = "hamming_norm", baseline: float | None = None,
                     title: str | None = None, max_cells: int = MAX_CELLS) -> Figure:
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

    max_cells : int
        Above this many masks the ordered matrix is drawn downsampled: each cell the mean of b x b pairs
        (b = `heatmap_block(n, max_cells)`, said on the axes), so that thousands of masks stay readable and
        the figure file small.

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
    if chance is not None:  # diverging around chance: which pairs are closer than random masks, which farther
        colours = {"cmap": _cmap("RdBu_r"), "norm": TwoSlopeNorm(vcenter=chance, vmin=lo, vmax=hi)}
    else:
        colours = {"cmap": _cmap("viridis"), "vmin": lo, "vmax": hi}
    block = heatmap_block(n, max_cells)
    image = ax.imshow(_block_means(values, block), aspect="auto", interpolation="nearest",
                      extent=(-0.5, n - 0.5, n - 0.5, -0.5), **colours)
    ax.grid(False)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    order_name = "dendrogram order" if linkage is not None else "order given" if order is not None else "as given"
    every = tick_step(n)
    ticks = np.arange(0, n, every)
    shown = [str(v) for v in ids[positions][ticks]]
    ax.set_xticks(ticks, shown, rotation=90, fontsize=7 if len(ticks) > 20 else 8)
    ax.set_yticks(ticks, shown, fontsize=7 if len(ticks) > 20 else 8)
    which = "mask id" if every == 1 else f"mask id, every {ordinal(every)} of {n} labelled"
    cells = f"; each cell the mean of {block} x {block} pairs" if block > 1 else ""
    ax.set_xlabel(f"{which} ({order_name}{cells})")
    ax.set_ylabel(f"{which} ({order_name})")
    cax.set_label("<colorbar>")
    bar = fig.colorbar(image, cax=cax)
    if chance is not None:
        bar.ax.set_yscale("linear")  # (TwoSlopeNorm's two slopes would stretch the bar unevenly)
    bar.set_label(label + ("\n(dashed: random masks, expected;\nred above, blue below)" if chance is not None
                           else ""))
    if chance is not None:  # inside the range (`_colour_range`), with a white halo so it shows on any colour
        bar.ax.axhline(chance, color="white", linewidth=3.5)
        bar.ax.axhline(chance, color=EXPECTED_COLOR, linestyle="--", linewidth=1.5, label="chance")
    heading = title or f"Pairwise {label.split(' (')[0]} of {n} masks"
    if linkage is not None:
        fig.suptitle(heading)
    else:
        ax.set_title(heading)
    return fig


def tick_step(n: int, most: int = MAX_TICK_LABELS) -> int:
    """Label every k-th of `n` masks so that at most `most` labels show (k = ceil(n / most); 1 up to `most`)."""
    return max(1, -(-int(n) // int(most)))


def ordinal(k: int) -> str:
    """2 -> "2nd", 3 -> "3rd", 11 -> "11th", 22 -> "22nd"."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


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


# ---- distance histogram ---------------------------------------------------------------------------------------
def _weighted(data, layer: str | None, metric: str | None, what: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(values, weights, metric name) of a long distance table, Series or array; a table with a ``count`` column
    is a histogram (each value stands for `count` pairs, e.g. every pair of 10,000 masks binned by distance)."""
    values, metric = _values(data, layer, metric, what)
    if isinstance(data, pd.DataFrame) and "count" in data.columns:
        rows = data
        if layer is not None and "layer" in rows.columns:
            rows = rows[rows["layer"] == layer]
        if metric is not None and "metric" in rows.columns:
            rows = rows[rows["metric"] == metric]
        return values, rows["count"].to_numpy(dtype=float), metric
    return values, np.ones(len(values)), metric


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
        One value per mask pair (``masklab.distances(masks, metric=...)``), or, with a ``count`` column, a
        histogram: each value with the number of pairs at it (every pair of a large run, binned; the
        ``distance_histogram`` table of `analyze`). Rows of other layers than `layer` and of other metrics than
        `metric` are dropped.
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
    obs, weights, name = _weighted(observed, layer, metric, "distance_histogram")
    metric = metric or name
    rnd, rname = _values(random, layer, metric, "distance_histogram (random)")
    metric = metric or rname
    if obs.size == 0 or weights.sum() <= 0:
        raise UserError(f"distance_histogram: no observed distances to draw (layer {layer!r}, metric {metric!r})")
    scale, label = metric_axis(metric)
    obs, rnd = obs * scale, rnd * scale
    n_obs = int(round(weights.sum()))
    mean = float((obs * weights).sum() / weights.sum())
    both = np.concatenate([obs, rnd, [] if expected is None else [expected * scale]])
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
    edges = np.linspace(lo, hi, int(bins) + 1)
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    ax.hist(obs, bins=edges.tolist(), weights=weights, density=True, color=MASK_COLOR, alpha=0.65,
            label=f"mask pairs (n = {n_obs:,})")
    if rnd.size:
        ax.hist(rnd, bins=edges.tolist(), density=True, histtype="step", color=RANDOM_COLOR, linewidth=1.8,
                label=f"random-mask pairs (n = {rnd.size:,})")
    ax.axvline(mean, color=MASK_COLOR, linewidth=1.5, label=f"mask mean {mean:.4g}")
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


__all__ = ["distance_heatmap", "distance_histogram"]
