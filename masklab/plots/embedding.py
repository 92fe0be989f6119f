"""The embedding figure: the masks as points of a 2-D embedding of their distances
(`masklab.analysis.embedding`), coloured by accuracy, cluster or run."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from masklab.plots._style import MASK_COLOR, RANDOM_COLOR, as_percent, new_figure, require, sentence, styled


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
    size, alpha = _marker(len(real))
    chosen: list[str | None] = [c for c in color_by if c in points.columns]
    panels = chosen or [None]
    fig = new_figure(4.6 * len(panels) + 0.6, 4.3)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, column in zip(axes, panels):
        if len(ref):
            ax.scatter(ref["x"], ref["y"], marker="x", s=14, color=RANDOM_COLOR, linewidths=0.8,
                       label="random masks (same per-layer counts)", zorder=1)
        if column is None:
            ax.scatter(real["x"], real["y"], s=size, alpha=alpha, color=MASK_COLOR, label="masks", zorder=2,
                       linewidths=0)
            ax.set_title(f"{axis_name} of {len(real)} masks")
        elif _is_categorical(points[column]):
            _categorical(ax, real, column)
            ax.set_title(sentence(_colour_label(column)))
        else:
            values = real[column].to_numpy(dtype=float)
            shown = as_percent(values)[0] if "acc" in column else values
            dots = ax.scatter(real["x"], real["y"], c=shown, s=size, alpha=alpha, cmap="viridis", edgecolors="0.2",
                              linewidths=0.3 if len(real) <= MANY_POINTS else 0, zorder=2)
            fig.colorbar(dots, ax=ax, label=_colour_label(column), shrink=0.9)
            ax.set_title(sentence(_colour_label(column).split(" (")[0]))
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


MANY_POINTS = 300  # from here the scatter's markers shrink and turn translucent


def _marker(n: int) -> tuple[float, float]:
    """(marker area, alpha) for n points: 24 and opaque up to MANY_POINTS, then shrinking as 1 / sqrt(n) (down
    to 2) and translucent (down to 0.15), so that 10,000 masks show their density instead of a blot."""
    if n <= MANY_POINTS:
        return 24.0, 1.0
    ratio = np.sqrt(MANY_POINTS / n)
    return max(2.0, 24.0 * ratio), max(0.15, float(ratio))


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
        size, alpha = _marker(len(frame))
        ax.scatter(rows["x"], rows["y"], s=size, alpha=alpha, color=colour, edgecolors="0.2",
                   linewidths=0.3 if len(frame) <= MANY_POINTS else 0, label=name, zorder=2)


__all__ = ["embedding_scatter"]
