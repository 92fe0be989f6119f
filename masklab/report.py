"""`masklab analyze`: run every analysis that fits a run, write tables, figures and an index page.

Tables (Parquet and CSV) go to `<run>/analysis/`, figures (PNG by default; `formats=("png", "svg")` for
more) to `figures/<run id>/`, and `figures/<run id>/index.html` shows every figure with a one-line caption,
the key numbers and where the time went. Each stage is a short function from the run (or earlier tables)
to DataFrames (the analyses live in `masklab.analysis`; a stage runs them, draws their figures here, in
this process, and notes the key numbers); stages hand intermediates on through `Shared`. `analyze(run)`
returns everything in a `Report`, so a notebook gets the same results as the command line. `compare` does
the same for two runs (`masklab.analysis.compare`); both pages come from one writer (`write_page`), in one
style, with every link relative to the page.

The key numbers say only what the numbers carry: every comparison with chance gives the effect in standard
deviations of its null (one random pair for overlaps, the random sets for the structure test), every
p-value the resolution its null allows, and every figure the n it rests on; a correlation is only given
from 10 pairs (`masklab.analysis.thresholds`), and clusters are only coloured when the structure test
finds them (p < 0.05 and a silhouette above 0.25).
"""

from __future__ import annotations

import html
import io
import json
import os
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from masklab.errors import UserError
from masklab.store import files as F
from masklab.units import metric_value, percent, shown_by_metric, signed_sd
from masklab.units import points as points_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from masklab.analysis.clustering import StructureTest
    from masklab.store.run import Run

DEFAULT_PAIRS = 3  # interpolation pairs sampled by default
DEFAULT_POINTS = 30
DEFAULT_FORMATS = ("png",)
DEFAULT_N_RANDOM = 99  # random mask sets of the structure test: p down to 0.01
STRUCTURE_MAX_MASKS = 200  # larger runs: the structure test uses a seeded random subset of this many masks


@dataclass
class Report:
    """What `analyze` produced: tables by name, figure paths by name, the index page, key numbers."""

    run_id: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    key_numbers: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    index: Path | None = None

    def summary(self) -> pd.DataFrame:
        """The key numbers as a two-column table (what the index page shows at the top)."""
        return pd.DataFrame({"quantity": list(self.key_numbers), "value": list(self.key_numbers.values())})


@dataclass
class Shared:
    """What the stages of one `analyze` hand on to each other and where their figures go. Each field is
    set by the stage named beside it (None until then, or when that stage does not apply)."""

    figures: Path                                  # the figures folder of this run
    formats: tuple[str, ...] = DEFAULT_FORMATS     # figure formats
    square: pd.DataFrame | None = None             # distances: N x N normalised Hamming distances
    baseline_all: float | None = None              # distances: its random-mask expectation, whole network
    labels: pd.DataFrame | None = None             # clustering: cluster labels per mask_id
    structure: StructureTest | None = None         # clustering: the structure test against random masks
    figure_seconds: float = 0.0                    # time spent drawing and writing figures so far
    lap_mark: tuple[float, float] = (0.0, 0.0)     # (clock, figure_seconds) at the last `lap`

    def lap(self) -> float:
        """Seconds since the last call, less the figures drawn meanwhile (counted in `figure_seconds`)."""
        now, drawn = time.perf_counter(), self.figure_seconds
        seconds = now - self.lap_mark[0] - (drawn - self.lap_mark[1])
        self.lap_mark = (now, drawn)
        return seconds


Stage = Callable[["Run", Report, Shared], None]


def analyze(run, figures_dir: str | os.PathLike | None = None, *, quiet: bool = True, pairs: int = DEFAULT_PAIRS,
            points: int = DEFAULT_POINTS, embedding: bool = True, interpolation: bool = True,
            random_state: int = 0, formats: tuple[str, ...] | str = DEFAULT_FORMATS, embedding_method: str = "auto",
            n_random: int = DEFAULT_N_RANDOM) -> Report:
    """Analyse `run` (a Run, path or run id) and write its tables, figures and index page.

    `figures_dir` defaults to `figures/` beside the run's `runs/` folder; figures land in
    `<figures_dir>/<run id>/` in each of `formats` (PNG only by default: each SVG costs as much again).
    `pairs` mask pairs are interpolated (soft path, `points` points each). The embedding is MDS below 50
    masks and UMAP from 50 (`embedding_method="auto"`, see `masklab.analysis.embedding.choose_method`).
    The cluster-structure test draws `n_random` random mask sets (p-value resolution 1 / (1 + n_random)).

    `Report.seconds` splits the wall time: each stage (its own computation), "figures" (drawing and writing
    every figure file), "tables" (writing them), "index" (the page).
    """
    from tqdm import tqdm

    from masklab.store.run import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    if len(run.ids) == 0:
        raise UserError(f"run {run.id} has no finished masks yet; generate some first (masklab generate --resume)")
    formats = check_formats(formats)
    figures_root = Path(figures_dir) if figures_dir is not None else run.path.parent.parent / "figures"
    out_tables = F.make_dirs(run.path / "analysis", root=run.path)  # links refused: nothing written outside
    out_figures = F.make_dirs(figures_root / run.id, root=figures_root)
    report = Report(run.id)
    shared = Shared(out_figures, formats)
    stages: list[tuple[str, Stage]] = [("distances", _distances), ("consensus", _consensus),
                                       ("clustering", lambda r, rep, sh: _clustering(r, rep, sh, n_random))]
    if embedding and len(run.ids) >= 4:
        stages.append(("embedding", lambda r, rep, sh: _embedding(r, rep, sh, embedding_method)))
    if interpolation and len(run.ids) >= 2 and pairs > 0 and run.has_architecture:
        stages.append(("interpolation", lambda r, rep, sh: _interpolation(r, rep, sh, pairs, points, random_state)))
    if any(run.has_extra(i, "snapshots") for i in run.ids):
        stages.append(("trajectories", _trajectories))
    bar = tqdm(total=len(stages) + 1, disable=quiet, unit="stage", desc="analyze", dynamic_ncols=True,
               leave=False)
    for name, stage in stages:
        bar.set_description(f"analyze: {name}")
        shared.lap()
        stage(run, report, shared)
        report.seconds[name] = shared.lap()
        bar.update(1)
    report.seconds["figures"] = shared.figure_seconds
    bar.set_description("analyze: tables")
    start = time.perf_counter()
    for name, table in report.tables.items():
        _write_table(table, out_tables / name)
    report.seconds["tables"] = time.perf_counter() - start
    bar.update(1)
    bar.close()
    start = time.perf_counter()
    _drop_stale_formats(report, formats)
    report.index = _write_index(run, report, out_figures, out_tables, formats)
    report.seconds["index"] = time.perf_counter() - start
    return report


def _drop_stale_formats(report: Report, formats: tuple[str, ...]) -> None:
    """Remove other-format copies of the figures just written (an SVG left by an earlier `--formats png,svg`
    run would no longer match its PNG)."""
    for path in report.figures.values():
        for fmt in FORMATS:
            stale = path.with_suffix(f".{fmt}")
            if fmt not in formats and stale.is_file() and not stale.is_symlink():
                stale.unlink()


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


# ---- stages ---------------------------------------------------------------------------------------------
def _figure(report: Report, shared: Shared, name: str, plot: Callable[..., Figure], args: tuple, caption: str,
            **kwargs) -> None:
    """Draw ``plot(*args, **kwargs)`` (a figure function of `masklab.plots`) and write it as `name` in the
    report's formats, here and now; the time goes to `shared.figure_seconds`."""
    from masklab.plots import save_figure

    start = time.perf_counter()
    paths = save_figure(plot(*args, **kwargs), shared.figures / name, formats=shared.formats)
    shared.figure_seconds += time.perf_counter() - start
    report.figures[name] = next((p for p in paths if p.suffix == ".png"), paths[0])
    report.captions[name] = caption


def _distances(run: Run, report: Report, shared: Shared) -> None:
    from masklab.analysis import intersections, layer_summary, random_baseline, random_baseline_samples, with_baseline
    from masklab.analysis.distances import long_table, square_table
    from masklab.plots import distance_histogram, per_layer_similarity

    masks = run.masks
    counts = intersections(masks, per_layer=True)
    long = pd.concat([long_table(counts, m) for m in ("hamming_norm", "matching", "jaccard")], ignore_index=True)
    long = with_baseline(long, masks)
    baseline = random_baseline(masks)
    shared.square = square_table(counts, "hamming_norm")
    shared.baseline_all = float(baseline.loc[baseline["layer"] == "all", "hamming_norm"].iloc[0])
    report.tables["distances"] = long
    report.tables["baseline"] = baseline
    overlap = long[long["metric"].isin(["matching", "jaccard"])]
    summary = layer_summary(overlap, baseline)
    report.tables["layer_summary"] = summary
    n_random = max(len(masks), 8)
    random = random_baseline_samples(masks, n_samples=n_random, metric="hamming_norm", per_layer=False,
                                     random_state=0)
    report.tables["random_distances"] = random
    if len(masks) < 2:
        return
    _figure(report, shared, "per_layer_similarity", per_layer_similarity, (summary,),
            "Percent matching and Jaccard index per layer (mean and range over mask pairs) beside the "
            "random-mask baseline with the same per-layer counts.")
    whole = long[(long["layer"] == "all") & (long["metric"] == "hamming_norm")]
    _figure(report, shared, "distance_histogram", distance_histogram, (whole, random, shared.baseline_all),
            "Normalised Hamming distance of every mask pair against random masks with the same per-layer "
            "counts (histogram) and the closed-form expectation (line).", metric="hamming_norm")
    first = summary.iloc[0]
    report.key_numbers["pairs compared"] = (f"{int(first['n_pairs']):,} pairs of {int(first['n_masks'])} masks "
                                            "(chance: two independent random masks with the same per-layer "
                                            "counts)")
    for row in summary.itertuples():
        report.key_numbers[f"{row.metric} {row.layer}"] = (
            f"{metric_value(str(row.metric), float(row.mean))} (chance "
            f"{metric_value(str(row.metric), float(row.baseline))}, {signed_sd(float(row.z_vs_chance))} sd of one "
            "random pair)")


def _consensus(run: Run, report: Report, shared: Shared) -> None:
    from masklab.analysis import consensus, consensus_histogram, union_coverage
    from masklab.plots import consensus_histogram as plot_consensus

    masks = run.masks
    report.tables["consensus"] = consensus(masks)
    hist = consensus_histogram(masks)
    report.tables["consensus_histogram"] = hist
    report.tables["union_coverage"] = union_coverage(masks)
    _figure(report, shared, "consensus_histogram", plot_consensus, (hist,),
            f"How many of the {len(masks)} masks keep each weight, against Binomial(N, k) for independent random "
            "masks.")
    row = report.tables["consensus"].iloc[0]  # the whole network ("all")
    for column, words in (("kept_by_all", "kept by all masks"), ("kept_by_none", "kept by no mask")):
        report.key_numbers[f"weights {words}"] = (
            f"{int(row[column]):,} of {int(row['n_bits']):,} (chance {row['expected_' + column]:,.1f})")


def _clustering(run: Run, report: Report, shared: Shared, n_random: int = DEFAULT_N_RANDOM) -> None:
    from masklab.analysis.clustering import cluster_masks, cluster_summary, linkage_matrix, structure_vs_random
    from masklab.plots import distance_heatmap

    square = _need(shared.square, "distances")
    n = len(square)
    if n >= 2:
        link = linkage_matrix(square, "average")
        _figure(report, shared, "distance_heatmap", distance_heatmap, (square, link),
                "Pairwise normalised Hamming distances ordered by average-linkage clustering (dendrogram on "
                "top, its axis zoomed to the merges); the dashed lines mark the random-mask expectation.",
                metric="hamming_norm", baseline=shared.baseline_all)
    if n < 4:
        return
    labels = cluster_masks(square)
    shared.labels = labels
    report.tables["clusters"] = run.table.merge(labels, on="mask_id")
    summary = cluster_summary(square, labels)
    report.tables["cluster_summary"] = summary
    test = structure_vs_random(run.masks, n_random=n_random, random_state=0, max_masks=STRUCTURE_MAX_MASKS)
    shared.structure = test
    report.tables["structure_vs_random"] = test.summary
    report.key_numbers["cluster structure vs random masks"] = test.describe()
    for row in summary.itertuples():
        report.key_numbers[f"clusters ({row.method})"] = (
            f"{row.n_clusters} (silhouette {row.silhouette:.3f}; a tree cut always gives clusters: the structure "
            "test says whether they mean anything)" if row.method != "hdbscan"
            else f"none: all {row.n_noise} masks are noise" if row.n_clusters == 0
            else f"{row.n_clusters}, {row.n_noise} masks noise (silhouette {row.silhouette:.3f})")


def _need(value, stage: str):
    """An intermediate of an earlier stage (`Shared`), which must have run."""
    if value is None:
        raise RuntimeError(f"the {stage} stage must run before this one")
    return value


def _embedding(run: Run, report: Report, shared: Shared, method: str = "auto") -> None:
    from masklab.analysis.embedding import NAMES, choose_method, embed
    from masklab.plots import embedding_scatter

    square = _need(shared.square, "distances")
    n = len(square)
    used, why = choose_method(n, method)
    points = embed(square, used, random_state=0)
    table = run.table.merge(points, on="mask_id")
    if shared.labels is not None:
        table = table.merge(shared.labels, on="mask_id")
    report.tables["embedding"] = table
    test = shared.structure
    by_cluster = test is not None and test.finds_structure and "cluster_average" in table.columns
    color_by = ["test_acc"] + (["cluster_average"] if by_cluster else [])
    name = NAMES[used]
    title = f"{name} of the {n} masks" + ("\n" + textwrap.fill(f"({why})", 64) if why else "")
    if test is None:
        colours = "coloured by test accuracy"
    elif by_cluster:
        colours = f"coloured by test accuracy and by cluster (the structure test: {test.verdict()})"
    else:
        colours = (f"coloured by test accuracy only: the structure test finds no substantial cluster structure "
                   f"({test.verdict()}), so cluster colours would only show an arbitrary cut")
    report.key_numbers["embedding"] = why or name
    _figure(report, shared, used, embedding_scatter, (table, color_by),
            f"{name} of the masks on their normalised Hamming distances" + (f" ({why})" if why else "") +
            f", {colours}.", title=title)


def _interpolation(run: Run, report: Report, shared: Shared, pairs: int, points: int, random_state: int) -> None:
    from masklab.analysis.interpolation import barrier_correlation, barrier_matrix
    from masklab.analysis.thresholds import MIN_CORRELATION_PAIRS
    from masklab.plots import barrier_vs_distance, interpolation_curves

    n_pairs = min(pairs, len(run.ids) * (len(run.ids) - 1) // 2)
    barriers, curves = barrier_matrix(run, pairs=n_pairs, path="soft", points=points, random_state=random_state,
                                      return_curves=True)
    report.tables["barriers"] = barriers
    report.tables["interpolation"] = curves
    a, b = barriers["mask_a"].iloc[0], barriers["mask_b"].iloc[0]
    first = curves[(curves["mask_a"] == a) & (curves["mask_b"] == b)]
    _figure(report, shared, "interpolation", interpolation_curves, (first,),
            "Loss and accuracy along the soft path W * ((1 - t) m_a + t m_b) between two masks; the dashed line "
            "joins the ends and the arrow marks the barrier (error barrier in percentage points).")
    correlation = barrier_correlation(barriers)
    report.tables["barrier_correlation"] = correlation
    if len(barriers) >= 3:
        shown = "with Spearman's rank correlation" if len(barriers) >= MIN_CORRELATION_PAIRS else \
            f"(points only: a correlation needs at least {MIN_CORRELATION_PAIRS} pairs)"
        _figure(report, shared, "barrier_vs_distance", barrier_vs_distance, (barriers,),
                f"Loss and error barrier of each of the {len(barriers)} sampled pairs against its Hamming distance "
                f"{shown}.")
    loss, error = barriers["loss_barrier"], barriers["error_barrier"]
    report.key_numbers["loss barrier (soft path)"] = (f"mean {loss.mean():.4f} nats, max {loss.max():.4f} nats "
                                                      f"({len(loss)} pairs)")
    report.key_numbers["error barrier (soft path)"] = (f"mean {points_text(error.mean())}, max "
                                                       f"{points_text(error.max())} ({len(error)} pairs)")
    rows = correlation.set_index("barrier")
    if len(barriers) >= MIN_CORRELATION_PAIRS and rows["spearman_rho"].notna().any():
        parts = [f"{label} rho {rows.loc[b, 'spearman_rho']:+.2f} (p = {rows.loc[b, 'spearman_p']:.2g})"
                 for b, label in (("loss_barrier", "loss"), ("error_barrier", "error"))
                 if b in rows.index and np.isfinite(rows.loc[b, "spearman_rho"])]
        report.key_numbers["barrier vs Hamming distance"] = f"Spearman {', '.join(parts)}; n = {len(barriers)} pairs"
    else:
        report.key_numbers["barrier vs Hamming distance"] = (
            f"not estimated: {len(barriers)} pairs, a correlation needs at least {MIN_CORRELATION_PAIRS} "
            "(analyze --pairs)")


def _trajectories(run: Run, report: Report, shared: Shared) -> None:
    from masklab.analysis.trajectories import settling, trajectories
    from masklab.plots import trajectories as plot_trajectories

    traj = trajectories(run)
    report.tables["trajectories"] = traj
    report.tables["settling"] = settling(traj)
    _figure(report, shared, "trajectories", plot_trajectories, (traj,),
            "Distance of each mask's snapshots to its final mask, and to the other masks at the same epoch.",
            baseline=shared.baseline_all)


# ---- output ---------------------------------------------------------------------------------------------
def _write_table(table: pd.DataFrame, stem: Path) -> None:
    table = table.copy()
    for column in table.columns:  # tuples and mixed objects do not go into Parquet as they are
        if table[column].dtype == object and table[column].map(lambda v: isinstance(v, (tuple, list))).any():
            table[column] = table[column].map(lambda v: "x".join(map(str, v)) if isinstance(v, (tuple, list)) else v)
    F.atomic_write(stem.with_suffix(".csv"), table.to_csv(index=False).encode(), durable=False)
    try:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
    except (ImportError, ValueError, TypeError):  # an odd column type: the CSV still has it
        return
    F.atomic_write(stem.with_suffix(".parquet"), buffer.getvalue(), durable=False)


def _reading_notes(report: Report) -> str:
    """The page's short guide to its numbers (with this report's number of random sets)."""
    test = report.tables.get("structure_vs_random")
    sets = int(test["n_random"].iloc[0]) if test is not None and len(test) else DEFAULT_N_RANDOM
    return _READING_NOTES.format(sets=sets, floor=f"{1 / (1 + sets):.2g}")


_READING_NOTES = """<p class="notes"><b>Reading these numbers.</b> <i>sd of one random pair</i>: how far the masks'
mean overlap lies from chance, in standard deviations of the overlap of ONE pair of independent random masks
with the same per-layer counts (exact hypergeometric null); it does not grow with the number of masks. The mean
over all pairs is far more precise than one pair: the table <code>layer_summary</code> also gives the sd of the
mean under the null (<code>chance_se</code>, exact: overlaps of random pairs that share a mask are
uncorrelated), the matching test statistic (<code>z_mean_vs_chance</code>) and the jackknife standard error
over masks (<code>se_masks</code>). <i>Cluster structure</i>: the best silhouette of the masks against {sets} sets
of random masks; the p-value cannot go below 1 / (1 + sets) = {floor}, the effect is in sd of the random sets,
and "small but detectable" means p &lt; 0.05 with a silhouette of at most 0.25 (no substantial clusters,
Kaufman &amp; Rousseeuw). Correlations are only given from 10 pairs.</p>"""


def _seconds_html(seconds: dict[str, float]) -> str:
    if not seconds:
        return "<p>(not timed)</p>"
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{value:.2f} s</td></tr>" for name, value in seconds.items())
    return (f"<table>{rows}<tr><th>total</th><td>{sum(seconds.values()):.2f} s</td></tr></table>"
            "<p class=\"notes\">Stages count their own computation (imports they trigger included); "
            "<i>figures</i> is drawing and writing the figure files. Starting Python and the first imports come "
            "before and are not counted.</p>")


# ---- index pages: one look, one writer ------------------------------------------------------------------
PAGE_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}th,td{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}
td.num{text-align:right;font-variant-numeric:tabular-nums}thead th{border-bottom:2px solid #999}
figure{margin:2em 0}img{max-width:100%}figcaption{color:#444}code{background:#f4f4f4}
.notes{color:#444;font-size:90%;max-width:60em}dl.pairs dt{font-weight:bold}dl.pairs dd{margin:0 0 .4em 1.5em}"""

UNITS_NOTE = ("<p class=\"notes\"><b>Units.</b> Percent matching and accuracy in %, accuracy differences and "
              "error barriers in percentage points, the Jaccard index and normalised Hamming distance as "
              "fractions, losses and loss barriers in nats (mean cross-entropy). The tables hold fractions "
              "throughout.</p>")


def write_page(path: Path, title: str, body: str) -> Path:
    """Write an index page (`analyze`'s and `compare`'s alike): the shared style around `body`, atomically
    (a reader never sees half a page). Every link in `body` must be relative to the page's folder."""
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
            f"<style>{PAGE_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
    F.atomic_write(path, page.encode(), durable=False)
    return path


def relative(target: Path, page_dir: Path) -> str:
    """`target` as a link from a page in `page_dir` (POSIX separators; never a machine path)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())).as_posix()


def _key_numbers_html(key_numbers: dict[str, str]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in key_numbers.items())
    return f"<h2>Key numbers</h2><table>{rows}</table>"


def _figures_html(report: Report, page_dir: Path, formats: tuple[str, ...]) -> str:
    def svg_link(path: Path) -> str:
        svg = path.with_suffix(".svg")
        return f' (<a href="{html.escape(relative(svg, page_dir))}">SVG</a>)' \
            if "svg" in formats and svg.exists() else ""

    return "".join(
        f'<figure><img src="{html.escape(relative(path, page_dir))}" alt="{html.escape(name)}"><figcaption><b>'
        f"{html.escape(name)}</b>: {html.escape(report.captions[name])}{svg_link(path)}</figcaption></figure>"
        for name, path in report.figures.items())


def _tables_html(report: Report, folder: Path, page_dir: Path) -> str:
    where = relative(folder, page_dir)
    items = "".join(f'<li><a href="{html.escape(where)}/{html.escape(name)}.csv">{html.escape(name)}</a>: '
                    f"{len(t):,} rows</li>" for name, t in report.tables.items())
    return (f"<h2>Tables</h2><p>Parquet and CSV in <code>{html.escape(where)}/</code> (relative to this page)."
            f"</p><ul>{items}</ul>")


def html_table(table: pd.DataFrame) -> str:
    """A DataFrame as a plain table in the pages' style (numbers right-aligned), without its index."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{html.escape(str(v))}</td>' if isinstance(v, (int, float, np.number)) or
        (isinstance(v, str) and v[:1].isdigit()) else f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _config_text(run, page_dir: Path) -> str:
    """The run's non-default config as JSON, with a data folder given relative to the page."""
    config = run.config.to_dict(non_default=True)
    if config.get("data_root"):
        config["data_root"] = relative(Path(config["data_root"]), page_dir)
    return json.dumps(config)


def _write_index(run, report: Report, out: Path, tables: Path, formats: tuple[str, ...] = DEFAULT_FORMATS) -> Path:
    mean_acc = float(run.table["test_acc"].mean())
    body = (f"<h1>Mask landscape of {html.escape(run.id)}</h1>\n"
            f"<p>{len(run.ids)} masks, mean final test accuracy {percent(mean_acc)}. Config (non-default): "
            f"<code>{html.escape(_config_text(run, out))}</code>.</p>\n"
            f"{_key_numbers_html(report.key_numbers)}\n{_reading_notes(report)}\n{UNITS_NOTE}\n"
            f"<h2>Figures</h2>{_figures_html(report, out, formats)}\n"
            f"{_tables_html(report, tables, out)}\n"
            f"<h2>Where the time went</h2>{_seconds_html(report.seconds)}")
    return write_page(out / "index.html", f"masklab: {run.id}", body)


# ---- compare two runs -----------------------------------------------------------------------------------
def compare(run_a, run_b, figures_dir: str | os.PathLike | None = None, *, embedding: bool = True,
            quiet: bool = True, formats: tuple[str, ...] | str = DEFAULT_FORMATS,
            embedding_method: str = "auto") -> Report:
    """Cross-run distances (e.g. Edge-Popup vs Biprop masks of the same weights) and a joint embedding,
    computed by `masklab.analysis.compare` and written here with a page in `analyze`'s style.

    Tables: `cross_distances` (every pair across the runs, per layer, with its random baseline),
    `comparison` (per layer and metric: mean within A, within B, across, and chance; when the runs share
    score seeds also across pairs of the same score seed and of other seeds) and `joint_embedding` (MDS
    below 50 masks in all, UMAP from 50: `masklab.analysis.embedding.choose_method`). Figures in `formats`
    (PNG only by default). Refused with a clear message when the runs' layer layouts differ. With
    ``quiet=False`` a progress line follows the steps; `Report.seconds` has their times.
    """
    from tqdm import tqdm

    from masklab.analysis.compare import check_comparable, compare_runs, joint_embedding
    from masklab.store.run import Run, open_run

    run_a = run_a if isinstance(run_a, Run) else open_run(run_a)
    run_b = run_b if isinstance(run_b, Run) else open_run(run_b)
    formats = check_formats(formats)
    check_comparable(run_a, run_b)
    if run_a.config.weight_seed != run_b.config.weight_seed:
        print(f"masklab: note: the runs use different weight seeds ({run_a.config.weight_seed} vs "
              f"{run_b.config.weight_seed}): their masks sit on different random weights", flush=True)
    name = f"compare-{run_a.id}-vs-{run_b.id}"
    figures_root = Path(figures_dir) if figures_dir is not None else run_a.path.parent.parent / "figures"
    out = F.make_dirs(figures_root / name, root=figures_root)
    report = Report(name)
    shared = Shared(out, formats)
    steps = ["across", "within A", "within B"] + (["embedding"] if embedding and len(run_a) + len(run_b) >= 4
                                                  else []) + ["tables"]
    bar = tqdm(total=len(steps), disable=quiet, unit="step", desc="compare", dynamic_ncols=True, leave=False)
    shared.lap()

    def step(label: str) -> None:
        report.seconds[label] = shared.lap()
        bar.update(1)
        bar.set_description(f"compare: {label} done")

    bar.set_description("compare: distances")
    report.tables.update(compare_runs(run_a, run_b, step=step))
    comparison = report.tables["comparison"]
    for row in comparison[comparison["layer"] == "all"].to_dict("records"):
        metric = str(row["metric"])
        report.key_numbers[f"{metric} across runs"] = (f"{metric_value(metric, row['across'])} (chance "
                                                       f"{metric_value(metric, row['chance'])})")
        for side in ("within A", "within B"):
            if side in row:
                report.key_numbers[f"{metric} {side}"] = metric_value(metric, row[side])
        if "across, same score seed" in row:
            report.key_numbers[f"{metric} across runs, same score seed"] = (
                f"{metric_value(metric, row['across, same score seed'])} (other seeds "
                f"{metric_value(metric, row['across, other seeds'])})")
    if "embedding" in steps:
        from masklab.analysis.embedding import NAMES
        from masklab.plots import embedding_scatter

        bar.set_description("compare: joint embedding")
        points, used, why = joint_embedding(run_a, run_b, embedding_method)
        report.tables["joint_embedding"] = points
        method = NAMES[used]
        _figure(report, shared, f"joint_{used}", embedding_scatter, (points, ["side"]),
                f"{method} of both runs' masks on their joint normalised Hamming distances, coloured by run "
                f"(A: {run_a.id}, B: {run_b.id})" + (f"; {why}" if why else "") + ".",
                title=f"{method} of both runs' {len(points)} masks"
                + ("\n" + textwrap.fill(f"({why})", 64) if why else ""))
        report.key_numbers["joint embedding"] = why or method
        step("embedding")
    report.seconds["figures"] = shared.figure_seconds
    bar.set_description("compare: tables and page")
    start = time.perf_counter()
    for name_, table in report.tables.items():
        _write_table(table, out / name_)
    report.index = _write_compare_index(run_a, run_b, report, out, formats)
    report.seconds["tables"] = time.perf_counter() - start
    bar.update(1)
    bar.close()
    return report


def comparison_text(comparison: pd.DataFrame) -> pd.DataFrame:
    """The comparison table as shown (pages, command line): matching in %, Jaccard as a fraction."""
    from masklab.analysis.compare import PAIR_SETS

    shown = shown_by_metric(comparison, [c for c in comparison.columns if c in PAIR_SETS])
    shown["layer"] = ["whole network" if str(v) == "all" else str(v) for v in shown["layer"]]
    return shown


def _write_compare_index(run_a, run_b, report: Report, out: Path, formats: tuple[str, ...] = DEFAULT_FORMATS
                         ) -> Path:
    from masklab.analysis.compare import PAIR_SETS

    comparison = report.tables["comparison"]
    present = [p for p in PAIR_SETS if p in comparison.columns]
    pairs = "".join(
        f"<dt>chance</dt><dd>what {html.escape(PAIR_SETS[p])} would give.</dd>" if p == "chance" else
        f"<dt>{html.escape(p)}</dt><dd>the mean over every pair of {html.escape(PAIR_SETS[p])}.</dd>"
        for p in present)

    def run_line(side: str, run) -> str:
        acc = float(run.table["test_acc"].mean()) if len(run.table) else float("nan")
        return (f"<li><b>{side}</b>: {html.escape(run.id)}: {len(run.ids)} masks, mean final test accuracy "
                f"{percent(acc)}; config (non-default) <code>{html.escape(_config_text(run, out))}</code></li>")

    body = (f"<h1>{html.escape(run_a.id)} vs {html.escape(run_b.id)}</h1>\n"
            f"<ul>{run_line('A', run_a)}{run_line('B', run_b)}</ul>\n"
            f"{_key_numbers_html(report.key_numbers)}\n"
            f"<h2>Per layer</h2><p>Percent matching (%) and Jaccard index (fraction), each the mean over a set of "
            f"mask pairs:</p><dl class=\"pairs\">{pairs}</dl>{html_table(comparison_text(comparison))}\n{UNITS_NOTE}\n"
            f"<h2>Figures</h2>{_figures_html(report, out, formats)}\n"
            f"{_tables_html(report, out, out)}\n"
            f"<h2>Where the time went</h2>{_seconds_html(report.seconds)}")
    return write_page(out / "index.html", f"masklab compare: {run_a.id} vs {run_b.id}", body)
