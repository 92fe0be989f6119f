"""What `analyze` and `compare` share: the Report they return, what their stages hand on to each other
(Shared), the figure formats, and how a figure and a table are written."""

from __future__ import annotations

import html
import io
import os
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from masklab import files as W
from masklab.analysis.baselines import with_baseline
from masklab.analysis.distances import long_table, stored_intersections
from masklab.errors import UserError
from masklab.report.drawing import FigureDrawer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from masklab.analysis.cluster_structure import StructureTest
    from masklab.analysis.distances import Intersections
    from masklab.analysis.functional import FunctionalSimilarity
    from masklab.analysis.pairs import PairStore
    from masklab.analysis.sampling import Sample
    from masklab.report.settings import AnalysisSettings
    from masklab.store.bits import MaskSet
    from masklab.store.run import Run

DEFAULT_FORMATS = ("png",)
DEFAULT_N_RANDOM = 99  # random mask sets of the structure test: p down to 0.01


# The key numbers' columns: `value` and `chance` in `unit` (fractions as the tables hold them: "fraction";
# "nats", "weights", "pairs", "clusters", "silhouette"), `sd_from_chance` the effect in sd of the null, `n` what
# the number rests on (pairs, masks), `text` the sentence the page and the command line show (in the units of
# masklab.units). A key number that is only words (which embedding, a correlation not estimated) has no value.
KEY_COLUMNS = ["name", "value", "unit", "chance", "sd_from_chance", "n", "text"]


@dataclass
class Report:
    """What `analyze` (or `compare`) produced: tables by name, figure paths by name, the index page, the key
    numbers (a DataFrame, see KEY_COLUMNS) and the seconds each stage took."""

    run_id: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    index: Path | None = None
    keys: list[dict] = field(default_factory=list, repr=False)  # the rows of key_numbers, in order
    warnings: list[str] = field(default_factory=list)  # what the reader must know first (page top, stderr)
    settings: AnalysisSettings | None = None  # analyze: what it computed (its id names its folders)
    folder: Path | None = None                # analyze: the analysis folder, runs/<run>/analysis/<settings id>
    pairs: PairStore | None = field(default=None, repr=False)  # analyze: the per-pair matrices (folder/pairs)
    masks: MaskSet | None = field(default=None, repr=False)    # analyze: the masks analysed

    def distances(self, metrics: tuple[str, ...] = ("hamming_norm", "matching", "jaccard"), *,
                  with_chance: bool = True) -> pd.DataFrame:
        """The long per-pair distance table (mask_a, mask_b, layer, metric, value and, `with_chance`, each pair's
        random baseline: `masklab.analysis.baselines.with_baseline`), made on demand from the stored matrices:
        ``tables["distances"]`` itself is only kept for runs small enough to read it (CSV_MAX_ROWS rows)."""
        if self.pairs is None or self.masks is None:
            raise UserError("this report has no per-pair matrices (only `analyze` stores them)")
        result = stored_intersections(self.pairs)
        long = pd.concat([long_table(result, m) for m in metrics], ignore_index=True)
        return with_baseline(long, self.masks) if with_chance else long

    def note(self, name: str, text: str, *, value: float | None = None, unit: str | None = None,
             chance: float | None = None, sd_from_chance: float | None = None, n: int | None = None) -> None:
        """Add key number `name`: the sentence shown (`text`) and, where it is one number, that number."""
        self.keys.append({"name": name, "value": value, "unit": unit, "chance": chance,
                          "sd_from_chance": sd_from_chance, "n": n, "text": text})

    @property
    def key_numbers(self) -> pd.DataFrame:
        """One row per key number: name, value, unit, chance, sd_from_chance, n, text (KEY_COLUMNS)."""
        table = pd.DataFrame(self.keys, columns=KEY_COLUMNS)
        return table.astype({"value": float, "chance": float, "sd_from_chance": float, "n": "Int64"})

    def summary(self) -> pd.DataFrame:
        """The key numbers as the command line prints them: (quantity, value) = (name, text)."""
        keys = self.key_numbers
        return pd.DataFrame({"quantity": keys["name"], "value": keys["text"]})

    def __repr__(self) -> str:
        return (f"Report({self.run_id!r}: {len(self.keys)} key numbers, {len(self.tables)} tables, "
                f"{len(self.figures)} figures{f', {len(self.warnings)} warnings' if self.warnings else ''}, "
                f"index={str(self.index) if self.index else None!r})")

    def _repr_html_(self) -> str:
        """A notebook's view: the warnings, the key numbers (as the command line prints them), links to the
        figures (with their captions) and the index page, and the tables' names and sizes."""
        def link(path: Path) -> str:  # relative to the notebook's folder where it can be
            try:
                target = os.path.relpath(path)
            except ValueError:
                target = str(path)
            return html.escape(Path(target).as_posix(), quote=True)

        esc = html.escape
        warnings = "".join(f"<p><b>Note:</b> {esc(w)}.</p>" for w in self.warnings)
        keys = "".join(f"<tr><th style=\"text-align:left\">{esc(str(n))}</th><td style=\"text-align:left\">"
                       f"{esc(str(t))}</td></tr>" for n, t in zip(self.key_numbers["name"], self.key_numbers["text"]))
        figures = "".join(f"<li><a href=\"{link(p)}\">{esc(name)}</a>: {esc(self.captions.get(name, ''))}</li>"
                          for name, p in self.figures.items())
        tables = ", ".join(f"{esc(name)} ({len(t):,} rows)" for name, t in self.tables.items())
        index = f" (<a href=\"{link(self.index)}\">index page</a>)" if self.index else ""
        return (f"<div><b>Report</b> {esc(self.run_id)}{index}{warnings}<table>{keys}</table>"
                + (f"<details><summary>{len(self.figures)} figures</summary><ul>{figures}</ul></details>"
                   if figures else "")
                + (f"<p>tables (<code>report.tables[name]</code>): {tables}</p>" if tables else "") + "</div>")


def embedding_title(what: str, why: str) -> str:
    """An embedding figure's title: `what` ("UMAP of the 64 masks"), then on a second line why the method
    was chosen when it is not the default one (`why` "MDS, not UMAP: 10 masks are fewer than 50, ..." gives
    "(10 masks are fewer than 50, ...)"), without naming the method again."""
    reason = why.split(": ", 1)[1] if ": " in why else ""
    return what + ("\n" + textwrap.fill(f"({reason})", 64) if reason else "")


def unfinished_warning(run: Run) -> str | None:
    """The sentence that says a run is unfinished (fewer finished masks than it plans), or None."""
    if run.complete:
        return None
    return (f"run {run.id} is unfinished: {len(run)} of {run.config.masks} masks are finished; these numbers "
            f"describe those {len(run)} (`masklab generate --resume {run.path}` trains the rest)")


@dataclass
class Shared:
    """What the stages of one `analyze` hand on to each other and where their figures go. Each field is
    set by the stage named beside it (None until then, or when that stage does not apply)."""

    figures: Path                                  # the figures folder of this analysis
    formats: tuple[str, ...] = DEFAULT_FORMATS     # figure formats
    tables: Path | None = None                     # analyze: the analysis folder (tables, pairs/, barriers/)
    settings: AnalysisSettings | None = None       # analyze: what it computes
    quiet: bool = True                             # no progress bars inside stages
    samples: list[Sample] = field(default_factory=list)  # every stage's sample, in order
    intersections: Intersections | None = None     # distances: all-pairs counts, from the pair folder
    square: pd.DataFrame | None = None             # clustering: normalised Hamming distances of its sample
    baseline_all: float | None = None              # distances: its random-mask expectation, whole network
    labels: pd.DataFrame | None = None             # clustering: cluster labels per mask_id
    structure: StructureTest | None = None         # clustering: the structure test against random masks
    functional: FunctionalSimilarity | None = None  # function: disagreement, ensembles, CKA
    drawer: FigureDrawer = field(default_factory=FigureDrawer)  # draws the figures (here, unless given one)
    figure_seconds: float = 0.0                    # time spent drawing and writing figures here so far
    lap_mark: tuple[float, float] = (0.0, 0.0)     # (clock, figure_seconds) at the last `lap`

    def lap(self) -> float:
        """Seconds since the last call, less the figures drawn meanwhile (counted in `figure_seconds`)."""
        now, drawn = time.perf_counter(), self.figure_seconds
        seconds = now - self.lap_mark[0] - (drawn - self.lap_mark[1])
        self.lap_mark = (now, drawn)
        return seconds


Stage = Callable[["Run", Report, Shared], None]



FORMATS = ("png", "svg", "pdf")


def check_formats(formats) -> tuple[str, ...]:
    """The figure formats as a tuple: from a sequence or a comma-separated string (e.g. "png,svg")."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",")]
    out = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in formats if str(f).strip()))
    unknown = [f for f in out if f not in FORMATS]
    if unknown or not out:
        raise UserError(f"figure formats {', '.join(unknown) or '(none)'} are invalid: use a comma-separated list "
                        f"of {', '.join(FORMATS)} (e.g. png,svg)")
    return out


def seconds_text(seconds: dict[str, float]) -> str:
    """Per-stage seconds on one line: "distances 0.41 s, consensus 0.05 s, ...; total 3.20 s"."""
    parts = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
    return f"{parts}; total {sum(seconds.values()):.2f} s"


def figure(report: Report, shared: Shared, name: str, plot: Callable[..., Figure], args: tuple, caption: str,
           **kwargs) -> None:
    """Draw ``plot(*args, **kwargs)`` (a figure function of `masklab.plots`) and write it as `name` in the
    report's formats, with `shared.drawer` (here, or by its worker while the stages go on: `FigureDrawer`); the
    time it takes here goes to `shared.figure_seconds`."""
    start = time.perf_counter()
    base = shared.figures / name
    shared.drawer.draw(plot, args, kwargs, base, shared.formats)
    shared.figure_seconds += time.perf_counter() - start
    report.figures[name] = base.with_name(f"{name}.{'png' if 'png' in shared.formats else shared.formats[0]}")
    report.captions[name] = caption


def finish_figures(report: Report, shared: Shared) -> None:
    """Wait for the figures still being drawn; ``report.seconds["figures"]``: the time the figures took here
    (drawing them, or waiting for the worker after the stages; the worker's own time is `shared.drawer.seconds`)."""
    start = time.perf_counter()
    shared.drawer.finish()
    report.seconds["figures"] = shared.figure_seconds + time.perf_counter() - start


CSV_MAX_ROWS = 100_000  # CSV only for tables a person reads; Parquet (typed, compressed, columnar) always


def write_table(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Write `table` as `stem`.parquet, and as `stem`.csv too when it has at most CSV_MAX_ROWS rows. Returns the
    files written (a table Parquet cannot hold, e.g. of mixed objects, is written as CSV whatever its size)."""
    table = table.copy()
    for column in table.columns:  # tuples and mixed objects do not go into Parquet as they are
        if table[column].dtype == object and table[column].map(lambda v: isinstance(v, (tuple, list))).any():
            table[column] = table[column].map(lambda v: "x".join(map(str, v)) if isinstance(v, (tuple, list)) else v)
    written = []
    try:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
    except (ImportError, ValueError, TypeError):  # an odd column type: CSV holds it
        buffer = None
    if buffer is not None:
        W.atomic_write(stem.with_suffix(".parquet"), buffer.getvalue(), durable=False)
        written.append(stem.with_suffix(".parquet"))
    if buffer is None or len(table) <= CSV_MAX_ROWS:
        W.atomic_write(stem.with_suffix(".csv"), table.to_csv(index=False).encode(), durable=False)
        written.append(stem.with_suffix(".csv"))
    return written

