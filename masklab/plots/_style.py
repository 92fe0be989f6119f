"""Shared look of masklab figures: figure creation (Agg canvas, constrained layout, no pyplot), style, colours,
axis labels of the distance metrics, and `save_figure`."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from masklab.errors import UserError
from masklab.files import atomic_write, make_dirs

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "figure.titlesize": 11, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "legend.frameon": False,
    "svg.hashsalt": "masklab", "svg.fonttype": "path", "image.cmap": "viridis",
}
MASK_COLOR = "C0"        # what is measured
RANDOM_COLOR = "0.55"    # random masks: sampled distributions, reference clouds
EXPECTED_COLOR = "black"  # closed-form expectations (dashed)
DPI = 150
PNG_COMPRESS_LEVEL = 1  # zlib level of written PNGs: level 6 (PIL's default) costs several times the time

# metric -> (factor applied to the values, axis label)
METRIC_AXES = {
    "hamming": (1.0, "Hamming distance (bits)"),
    "hamming_norm": (1.0, "normalised Hamming distance (fraction of bits)"),
    "matching": (100.0, "percent matching (% of bits that agree)"),
    "jaccard": (1.0, "Jaccard index (|a ∩ b| / |a ∪ b|)"),
}


def sentence(text: str) -> str:
    """`text` with its first letter capitalised (a title made from a label)."""
    return text[:1].upper() + text[1:]


def metric_axis(metric: str | None) -> tuple[float, str]:
    """(scale, axis label) for a distance metric; unknown names are shown as given."""
    if metric is None:
        return 1.0, "distance"
    return METRIC_AXES.get(str(metric), (1.0, str(metric)))


def styled(func):
    """Run a figure function under the masklab style (rcParams are read when artists are made)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(STYLE):
            return func(*args, **kwargs)
    return wrapper


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free Figure on an Agg canvas with constrained layout (nothing is ever shown)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def as_percent(values, reference=None) -> tuple[np.ndarray, float]:
    """(values in %, factor): values given as fractions (all of `reference`, default the values, within
    [-1, 1]) are multiplied by 100; values already in % are kept."""
    v = np.asarray(values, dtype=np.float64)
    ref = v if reference is None else np.asarray(reference, dtype=np.float64)
    finite = ref[np.isfinite(ref)]
    factor = 100.0 if finite.size and np.abs(finite).max() <= 1.0 else 1.0
    return v * factor, factor


def require(df, columns: Sequence[str], what: str) -> None:
    """UserError naming the missing columns of a figure's input table."""
    if not hasattr(df, "columns"):
        raise UserError(f"{what} takes a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{what} needs columns {', '.join(columns)}; missing: {', '.join(missing)} "
                        f"(the table has {', '.join(map(str, df.columns))})")
    if len(df) == 0:
        raise UserError(f"{what}: the table is empty, nothing to draw")


def save_figure(fig: Figure, path, *, dpi: int = DPI, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write `fig` as ``<path>.png`` (at `dpi`) and ``<path>.svg``; parent folders are created. A ``.png`` or
    ``.svg`` suffix on `path` is dropped. Output is reproducible (no timestamps, fixed SVG ids). Each file is
    written whole (rendered in memory, then renamed into place) and never through a symbolic link. Returns the
    paths written.

    Cheap: the figure's constrained layout is computed once (at `dpi`) for all formats, where each `savefig`
    would run it twice (a layout pass, then the drawing), and PNGs are compressed at zlib level 1 (files a
    fifth larger, encoded several times faster). The figure keeps its layout engine afterwards."""
    base = Path(path)
    if base.suffix.lower() in {".png", ".svg", ".pdf"}:
        base = base.with_suffix("")
    make_dirs(base.parent)  # (the folder itself is not followed if it is a link; its parents are the caller's)
    written = []
    engine, shown_dpi = fig.get_layout_engine(), fig.dpi
    with mpl.rc_context({"svg.hashsalt": STYLE["svg.hashsalt"], "svg.fonttype": STYLE["svg.fonttype"],
                         "figure.autolayout": False, "figure.constrained_layout.use": False}):
        try:
            if engine is not None:
                fig.set_dpi(dpi)
                fig.draw_without_rendering()  # the layout, once, at the resolution the PNG is drawn at
                fig.set_layout_engine(None)   # frozen: savefig neither repeats it nor its layout pass
            for fmt in formats:
                target = base.with_name(f"{base.name}.{fmt}")
                metadata = {"Date": None} if fmt in ("svg", "pdf") else {"Software": None} if fmt == "png" \
                    else None
                buffer = io.BytesIO()
                if fmt == "png":
                    fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata,
                                pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
                else:
                    fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
                atomic_write(target, buffer.getvalue(), durable=False)
                written.append(target)
        finally:
            fig.set_dpi(shown_dpi)
            if engine is not None:
                fig.set_layout_engine(engine)
    return written
