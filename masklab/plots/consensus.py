"""The consensus figure: how many of the N masks keep each weight (`masklab.analysis.consensus_histogram`),
against independent random masks (Binomial(N, k))."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from masklab.errors import UserError
from masklab.plots._style import EXPECTED_COLOR, MASK_COLOR, new_figure, require, styled

MAX_CONSENSUS_PANELS = 16
CONSENSUS_COLUMNS = 2
MAX_BARS = 200  # counts m = 0..N drawn as bars up to this many, as one filled step outline beyond


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
        if len(m) > MAX_BARS:  # one filled step patch: a bar each cost 1 s per 1,000 (figure drawing)
            ax.stairs(observed, np.append(m, m[-1] + 1) - 0.5, baseline=0.5 if log else 0, fill=True,
                      color=MASK_COLOR, alpha=0.75, label="masks (observed)")
        else:
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


__all__ = ["consensus_bars"]
